//! A dataset-level lock, so that `albef ingest` is safe to start from cron or a Kubernetes
//! CronJob: two overlapping runs on one dataset never write it at once. The lock is a work
//! lease (scope [`DATASET_LOCK_SCOPE`], unit = the dataset name) renewed by a heartbeat task;
//! a holder that dies loses it when the lease runs out, and a holder whose renewal fails is
//! told to stop through the flag it gave. A holder named `HOST:PID`
//! ([`crate::jobs::process_owner`]) whose process is gone from this host is taken over at once,
//! so a rerun after a crash goes ahead.
use crate::jobs::is_dead_local_process;
use crate::{now_ms, Registry};
use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `work_leases` scope of dataset locks.
pub const DATASET_LOCK_SCOPE: &str = "dataset-lock";

/// A held dataset lock. Release it with [`DatasetLock::release`]; dropping it stops the
/// heartbeat, and the lease then runs out by itself.
#[derive(Debug)]
pub struct DatasetLock {
    reg: Registry,
    dataset: String,
    owner: String,
    lost: Arc<AtomicBool>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Registry {
    /// Takes the lock of `dataset` for `owner`, waiting up to `wait` for another holder to
    /// finish (zero: fail at once). The lease lasts `lease` and is renewed every `lease / 3`;
    /// if a renewal fails, the lock is lost and `stop` is set so that the work stops.
    pub async fn lock_dataset(
        &self,
        dataset: &str,
        owner: &str,
        lease: Duration,
        wait: Duration,
        stop: Arc<AtomicBool>,
    ) -> Result<DatasetLock> {
        let started = Instant::now();
        while !self
            .try_claim_unit(DATASET_LOCK_SCOPE, dataset, owner, lease)
            .await?
        {
            if self.steal_from_dead_process(dataset, owner, lease).await? {
                break;
            }
            if started.elapsed() >= wait {
                let holder = self.dataset_lock_holder(dataset).await?;
                let (who, secs) = holder
                    .map(|(o, until)| (o, ((until - now_ms()).max(0) as f64 / 1000.0)))
                    .unwrap_or_else(|| ("another process".into(), 0.0));
                bail!(
                    "dataset {dataset:?} is being written by {who} (its lock runs out in {secs:.0} s \
                     unless renewed); another ingest of it is running. Try again later or wait for \
                     it with --lock-wait SECONDS"
                );
            }
            tokio::time::sleep(Duration::from_millis(500).min(wait)).await;
        }
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = {
            let (reg, dataset, owner, lost) = (
                self.clone(),
                dataset.to_string(),
                owner.to_string(),
                lost.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let renewed = reg.renew(DATASET_LOCK_SCOPE, &dataset, &owner, lease).await;
                    if !matches!(renewed, Ok(true)) {
                        tracing::error!(
                            dataset,
                            owner,
                            ?renewed,
                            "lost the dataset lock; stopping"
                        );
                        lost.store(true, Ordering::SeqCst);
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            })
        };
        Ok(DatasetLock {
            reg: self.clone(),
            dataset: dataset.to_string(),
            owner: owner.to_string(),
            lost,
            heartbeat,
        })
    }

    /// Takes the lock of `dataset` over from a holder that was a process on this host which no
    /// longer exists (killed), so that a rerun after a crash need not wait for the lease.
    async fn steal_from_dead_process(
        &self,
        dataset: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool> {
        let Some((holder, _)) = self.dataset_lock_holder(dataset).await? else {
            return Ok(false);
        };
        if !is_dead_local_process(&holder) {
            return Ok(false);
        }
        let took = self
            .take_over_unit(DATASET_LOCK_SCOPE, dataset, &holder, owner, lease)
            .await
            .with_context(|| {
                format!("taking the lock of dataset {dataset:?} from dead {holder}")
            })?;
        if took {
            tracing::warn!(
                dataset,
                holder,
                owner,
                "took the dataset lock of a dead process"
            );
        }
        Ok(took)
    }

    /// Who holds the lock of `dataset` and until when, if anyone does.
    pub async fn dataset_lock_holder(&self, dataset: &str) -> Result<Option<(String, i64)>> {
        self.unit_holder(DATASET_LOCK_SCOPE, dataset)
            .await
            .with_context(|| format!("reading the lock of dataset {dataset:?}"))
    }
}

impl DatasetLock {
    /// Whether a renewal failed (someone else may hold the lock now).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Stops the heartbeat and frees the lock for the next writer.
    pub async fn release(self) -> Result<()> {
        self.heartbeat.abort();
        self.reg
            .release_unit(DATASET_LOCK_SCOPE, &self.dataset, &self.owner)
            .await
            .with_context(|| format!("releasing the lock of dataset {:?}", self.dataset))
    }
}

impl Drop for DatasetLock {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}
