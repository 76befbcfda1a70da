//! The scheduled-ingestion queue on both backends: concurrent claims never hand one job to two
//! workers, an expired lease is taken over (and the history says so), one active job per
//! schedule with the catch-up policy, retries with backoff, and the dataset lock.
mod common;
use albef_registry::jobs::{backoff, JobRunStatus, JobStatus, Retry};
use albef_registry::{now_ms, Registry};
use common::{err_text, on_both};
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_workers_never_share_a_job() {
    on_both(|env| async move {
        let reg = env.reg;
        let mut queued = HashSet::new();
        for i in 0..24 {
            let name = format!("s{i}");
            reg.add_schedule(&name, "0 * * * *", "UTC", &json!({"i": i}))
                .await?;
            queued.insert(reg.trigger_schedule(&name, 3).await?.expect("a new job"));
        }
        // Eight workers, each with its own connection pool, race for the jobs.
        let mut workers = Vec::new();
        for w in 0..8 {
            let own = Registry::connect(&env.url).await?;
            workers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(c) = own.claim_job(&format!("w{w}"), LONG).await? {
                    got.push(c.job.id);
                }
                anyhow::Ok(got)
            }));
        }
        let mut seen = Vec::new();
        for w in workers {
            seen.extend(w.await??);
        }
        let unique: HashSet<i64> = seen.iter().copied().collect();
        assert_eq!(
            seen.len(),
            unique.len(),
            "a job was claimed twice: {seen:?}"
        );
        assert_eq!(unique, queued);
        for job in reg.jobs(None).await? {
            assert_eq!((job.status, job.attempts), (JobStatus::Running, 1));
            assert_eq!(reg.job_runs(job.id).await?.len(), 1);
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_is_taken_over_and_the_history_shows_it() {
    on_both(|env| async move {
        let reg = env.reg;
        reg.add_schedule("nightly", "@daily", "UTC", &json!({"args": []}))
            .await?;
        let job = reg.trigger_schedule("nightly", 3).await?.unwrap();
        let a = reg
            .claim_job("worker-a", Duration::from_millis(400))
            .await?
            .unwrap();
        assert_eq!((a.job.id, a.took_over_from.as_deref()), (job, None));
        // While A's lease runs, nobody else gets the job; A's heartbeat keeps it.
        assert!(reg.claim_job("worker-b", LONG).await?.is_none());
        assert!(reg.heartbeat(&a, Duration::from_millis(400)).await?);
        tokio::time::sleep(Duration::from_millis(700)).await;
        // A stopped heartbeating (it died): B takes the job over.
        let b = reg.claim_job("worker-b", LONG).await?.expect("taken over");
        assert_eq!((b.job.id, b.job.attempts), (job, 2));
        assert_eq!(b.took_over_from.as_deref(), Some("worker-a"));
        // A, if it comes back, has lost the job and cannot record an outcome.
        assert!(!reg.heartbeat(&a, LONG).await?);
        assert!(!reg.finish_job(&a, &json!({"rows": 1}), None).await?);
        assert!(reg.finish_job(&b, &json!({"rows": 7}), None).await?);
        let runs = reg.job_runs(job).await?;
        let summary: Vec<(&str, JobRunStatus, i64)> = runs
            .iter()
            .map(|r| (r.owner.as_str(), r.status, r.attempt))
            .collect();
        assert_eq!(
            summary,
            [
                ("worker-a", JobRunStatus::Lost, 1),
                ("worker-b", JobRunStatus::Succeeded, 2)
            ]
        );
        let lost = runs[0].error.as_deref().unwrap();
        assert!(lost.contains("taken over by worker-b"), "{lost}");
        assert_eq!(runs[1].stats, Some(json!({"rows": 7})));
        assert_eq!(
            reg.jobs(Some("nightly")).await?[0].status,
            JobStatus::Succeeded
        );
        assert!(reg.claim_job("worker-c", LONG).await?.is_none());
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_active_job_per_schedule_and_one_catch_up_run() {
    on_both(|env| async move {
        let reg = env.reg;
        let s = reg
            .add_schedule("hourly", "0 * * * *", "UTC", &json!({}))
            .await?;
        let first = s.next_run_at.unwrap();
        assert!(first > now_ms() && first % 3_600_000 == 0);
        assert!(
            reg.enqueue_due(first - 1, 3).await?.is_empty(),
            "not due yet"
        );
        // Five hours of missed ticks: one job, and the next tick is after `late`.
        let late = first + 5 * 3_600_000 + 60_000;
        let jobs = reg.enqueue_due(late, 3).await?;
        assert_eq!(jobs.len(), 1);
        let next = reg.schedule("hourly").await?.next_run_at.unwrap();
        assert_eq!(next, first + 6 * 3_600_000);
        // Due again while the job is queued, then running: no second job.
        let later = next + 1;
        assert!(reg.enqueue_due(later, 3).await?.is_empty());
        assert_eq!(reg.trigger_schedule("hourly", 3).await?, None);
        let c = reg.claim_job("w", LONG).await?.unwrap();
        assert!(reg.enqueue_due(later, 3).await?.is_empty());
        assert_eq!(
            reg.schedule("hourly").await?.last_status,
            Some(JobStatus::Running)
        );
        assert!(reg.finish_job(&c, &json!({}), None).await?);
        // Done: the waiting tick gives one catch-up job.
        assert_eq!(reg.enqueue_due(later, 3).await?.len(), 1);
        let listed = reg.schedule("hourly").await?;
        assert_eq!(
            (listed.jobs, listed.last_status),
            (2, Some(JobStatus::Queued))
        );
        assert!(listed.last_run_at.is_some());
        // Removing it cancels the queued job and keeps the history.
        reg.remove_schedule("hourly").await?;
        assert!(err_text(reg.schedule("hourly").await).contains("no schedule named"));
        let all = reg.jobs(None).await?;
        let statuses: Vec<JobStatus> = all.iter().map(|j| j.status).collect();
        assert_eq!(statuses, [JobStatus::Cancelled, JobStatus::Succeeded]);
        assert!(reg.claim_job("w", LONG).await?.is_none());
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_retry_with_backoff_until_max_attempts() {
    on_both(|env| async move {
        let reg = env.reg;
        reg.add_schedule("flaky", "@hourly", "UTC", &json!({}))
            .await?;
        assert!(err_text(
            reg.add_schedule("flaky", "@hourly", "UTC", &json!({}))
                .await
        )
        .contains("already exists"));
        assert!(err_text(
            reg.add_schedule("bad", "61 * * * *", "UTC", &json!({}))
                .await
        )
        .contains("minute"));
        let job = reg.trigger_schedule("flaky", 2).await?.unwrap();
        let base = Duration::from_millis(600);
        let c = reg.claim_job("w", LONG).await?.unwrap();
        let before = now_ms();
        let Retry::At(at) = reg
            .fail_job(&c, "HTTP 503 from the list server", base)
            .await?
        else {
            panic!("expected a retry");
        };
        assert!(
            at >= before + 600 && at <= now_ms() + 600,
            "{at} vs {before}"
        );
        assert!(
            reg.claim_job("w", LONG).await?.is_none(),
            "not before the backoff"
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        let c = reg
            .claim_job("w", LONG)
            .await?
            .expect("due after the backoff");
        assert_eq!(c.job.attempts, 2);
        assert_eq!(reg.fail_job(&c, "again", base).await?, Retry::GaveUp);
        let j = &reg.jobs(Some("flaky")).await?[0];
        assert_eq!(
            (j.id, j.status, j.last_error.as_deref()),
            (job, JobStatus::Failed, Some("again"))
        );
        let runs = reg.job_runs(job).await?;
        assert_eq!(runs.len(), 2);
        assert!(runs.iter().all(|r| r.status == JobRunStatus::Failed));
        assert!(reg.claim_job("w", LONG).await?.is_none());
        assert_eq!(reg.active_jobs().await?, 0);
        Ok(())
    })
    .await;
}

#[test]
fn backoff_doubles_and_is_capped() {
    let base = Duration::from_secs(30);
    assert_eq!(backoff(base, 1), Duration::from_secs(30));
    assert_eq!(backoff(base, 2), Duration::from_secs(60));
    assert_eq!(backoff(base, 4), Duration::from_secs(240));
    assert_eq!(backoff(base, 40), Duration::from_secs(3600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dataset_lock_keeps_a_second_writer_out() {
    on_both(|env| async move {
        let reg = env.reg;
        let stop = Arc::new(AtomicBool::new(false));
        let lease = Duration::from_millis(600);
        let a = reg
            .lock_dataset("cc3m", "ingest-a", lease, Duration::ZERO, stop.clone())
            .await?;
        // The heartbeat keeps the lock past its first lease.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(!a.is_lost());
        let refused = err_text(
            reg.lock_dataset("cc3m", "ingest-b", lease, Duration::ZERO, stop.clone())
                .await,
        );
        assert!(refused.contains("being written by ingest-a"), "{refused}");
        // Another dataset is free.
        reg.lock_dataset("laion", "ingest-b", lease, Duration::ZERO, stop.clone())
            .await?
            .release()
            .await?;
        // B waits for A to release.
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            a.release().await
        });
        let b = reg
            .lock_dataset(
                "cc3m",
                "ingest-b",
                lease,
                Duration::from_secs(10),
                stop.clone(),
            )
            .await?;
        releaser.await??;
        assert_eq!(
            reg.dataset_lock_holder("cc3m").await?.unwrap().0,
            "ingest-b"
        );
        // A holder that dies (no heartbeat) loses the lock when its lease runs out.
        drop(b);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(reg.dataset_lock_holder("cc3m").await?, None);
        reg.lock_dataset("cc3m", "ingest-c", lease, Duration::ZERO, stop.clone())
            .await?
            .release()
            .await?;
        // A holder on this host whose process is gone (SIGKILL) is taken over at once.
        let mut child = std::process::Command::new("true").spawn()?;
        let dead_pid = child.id();
        child.wait()?;
        let me = albef_registry::process_owner();
        let host = me.rsplit_once(':').unwrap().0;
        let dead = format!("{host}:{dead_pid}:ingest");
        let held = reg
            .lock_dataset("cc12m", &dead, LONG, Duration::ZERO, stop.clone())
            .await?;
        drop(held); // its heartbeat stops as the process would
        let alive = format!("{me}:ingest");
        let took = reg
            .lock_dataset("cc12m", &alive, lease, Duration::ZERO, stop.clone())
            .await?;
        assert_eq!(reg.dataset_lock_holder("cc12m").await?.unwrap().0, alive);
        // A live holder of this host is not taken over.
        let refused = err_text(
            reg.lock_dataset("cc12m", "elsewhere:1", lease, Duration::ZERO, stop.clone())
                .await,
        );
        assert!(refused.contains(&alive), "{refused}");
        took.release().await?;
        assert!(!stop.load(std::sync::atomic::Ordering::SeqCst));
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedules_keep_their_time_zone() {
    on_both(|env| async move {
        let reg = env.reg;
        let s = reg
            .add_schedule("berlin", "0 3 * * *", "Europe/Berlin", &json!({}))
            .await?;
        assert_eq!(s.tz, "Europe/Berlin");
        // 03:00 in Berlin is 01:00 or 02:00 UTC (summer or winter time).
        let hour_utc = s.next_run_at.unwrap() / 3_600_000 % 24;
        assert!(hour_utc == 1 || hour_utc == 2, "{hour_utc}");
        assert_eq!(
            reg.add_schedule("utc", "@daily", "UTC", &json!({}))
                .await?
                .tz,
            "UTC"
        );
        let e = err_text(reg.add_schedule("x", "@daily", "Berlin", &json!({})).await);
        assert!(e.contains("unknown time zone \"Berlin\""), "{e}");
        Ok(())
    })
    .await;
}
