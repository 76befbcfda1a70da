//! Jobs: ingestion schedules (cron expressions evaluated in each schedule's time zone), the job
//! queue that workers claim with leases and heartbeats, the record of every attempt with its
//! [`JobStatus`] and [`JobRunStatus`], and work leases on units of work (chunks of a URL list,
//! the dataset lock of [`crate::datasets`]) shared by workers on several machines. Every lease
//! and due time is judged by the database's clock.
mod cron;
mod leases;
mod queue;
mod schedules;

pub use cron::{format_utc, Cron};
pub(crate) use leases::is_dead_local_process;
pub use leases::{process_owner, UnitLease};
pub use queue::{backoff, Claim, Job, JobRun, JobRunStatus, JobStatus, Retry};
pub use schedules::Schedule;
