//! Runs, params, tags and metrics on both backends: the summary matches the points, bad input
//! is refused with a clear error and writes nothing.
mod common;
use albef_registry::{MetricWriterOptions, RunStatus};
use common::{err_text, on_both};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_lifecycle_and_metric_summaries() {
    on_both(|env| async move {
        let reg = env.reg;
        let run = reg.create_run("exp", "r1", &json!({"lr": 0.1})).await?;
        reg.log_params(run, &[("lr".into(), "0.1".into()), ("bs".into(), "64".into())]).await?;
        reg.set_tags(run, &[("team".into(), "a".into())]).await?;
        reg.set_tags(run, &[("team".into(), "b".into())]).await?;
        // Small batches so that the summary is built over several flushes.
        let w = reg.metric_writer_with(run, MetricWriterOptions { batch: 7, interval: Duration::from_millis(5) });
        let values: Vec<f64> = (0..100).map(|i| ((i * 37) % 101) as f64 / 10.0).collect();
        // Steps out of order: the last value is the one at the highest step.
        for (i, v) in values.iter().enumerate().rev() {
            w.log("loss", i as i64, *v)?;
        }
        w.log("acc", 0, 0.5)?;
        // Values whose decimal forms are long or extreme come back bit for bit.
        // (Not -0.0: SQLite stores it as the integer 0.)
        let exact = [0.1 + 0.2, 1.0 / 3.0, f64::MIN_POSITIVE, -1.7e308, 5e-324];
        for (step, v) in exact.iter().enumerate() {
            w.log("exact", step as i64, *v)?;
        }
        w.finish().await?;
        let d = reg.run_detail(run).await?;
        assert_eq!(d.run.status, RunStatus::Running);
        assert_eq!(d.params, vec![("bs".into(), "64".into()), ("lr".into(), "0.1".into())]);
        assert_eq!(d.tags, vec![("team".into(), "b".into())]);
        let loss = d.metrics.iter().find(|m| m.key == "loss").unwrap();
        assert_eq!(loss.count, 100);
        assert_eq!(loss.last_step, 99);
        assert_eq!(loss.last, values[99]);
        assert_eq!(loss.min, values.iter().cloned().fold(f64::INFINITY, f64::min));
        assert_eq!(loss.max, values.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
        let hist = reg.metric_history(run, "loss").await?;
        assert_eq!(hist.iter().map(|p| p.value).collect::<Vec<_>>(), values);
        assert_eq!(hist.iter().map(|p| p.step).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let stored: Vec<f64> = reg.metric_history(run, "exact").await?.iter().map(|p| p.value).collect();
        assert_eq!(bits(&stored), bits(&exact));

        // Re-logging a stored step keeps the first value and does not count twice.
        let w = reg.metric_writer(run);
        w.log("loss", 5, -100.0)?;
        w.log("loss", 100, 0.25)?;
        w.finish().await?;
        let s = reg.metric_summaries(run).await?;
        let loss = s.iter().find(|m| m.key == "loss").unwrap();
        assert_eq!((loss.count, loss.last_step, loss.last), (101, 100, 0.25));
        assert!(loss.min >= 0.0);

        reg.finish_run(run, RunStatus::Finished).await?;
        let r = reg.run(run).await?;
        assert_eq!(r.status, RunStatus::Finished);
        assert!(r.end_time.unwrap() >= r.start_time);
        assert!(err_text(reg.finish_run(run, RunStatus::Failed).await).contains("already FINISHED"));
        assert_eq!(reg.runs(Some("exp")).await?.len(), 1);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_without_partial_writes() {
    on_both(|env| async move {
        let reg = env.reg;
        let run = reg.create_run("exp", "r1", &json!({})).await?;
        let dup = err_text(reg.create_run("exp", "r1", &json!({})).await);
        assert!(
            dup.contains("a run named \"r1\" already exists in experiment \"exp\""),
            "{dup}"
        );
        assert_eq!(reg.runs(None).await?.len(), 1);

        let unknown = err_text(reg.log_params(9999, &[("a".into(), "1".into())]).await);
        assert!(unknown.contains("run 9999 does not exist"), "{unknown}");
        assert!(err_text(reg.run(9999).await).contains("run 9999 does not exist"));
        assert!(err_text(reg.runs(Some("nope")).await).contains("no experiment named \"nope\""));

        // A changed param fails the whole batch: the first param of the batch is not written.
        reg.log_params(run, &[("lr".into(), "0.1".into())]).await?;
        let changed = err_text(
            reg.log_params(
                run,
                &[("bs".into(), "8".into()), ("lr".into(), "0.2".into())],
            )
            .await,
        );
        assert!(
            changed.contains("param \"lr\" of run") && changed.contains("cannot change"),
            "{changed}"
        );
        assert_eq!(
            reg.run_detail(run).await?.params,
            vec![("lr".into(), "0.1".into())]
        );

        let w = reg.metric_writer(run);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = err_text(w.log("loss", 1, bad));
            assert!(e.contains("is not a finite number"), "{e}");
        }
        assert!(err_text(w.log("", 1, 1.0)).contains("metric name is empty"));
        w.finish().await?;
        assert!(reg.metric_summaries(run).await?.is_empty());

        // Metrics of a run that does not exist: the flush fails, finish reports it, nothing stored.
        let w = reg.metric_writer(4242);
        w.log("loss", 1, 1.0)?;
        let e = err_text(w.finish().await);
        assert!(e.contains("run 4242 does not exist"), "{e}");
        assert!(err_text(reg.finish_run(run, RunStatus::Running).await)
            .contains("cannot be finished with status RUNNING"));
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metric_writer_works_from_a_plain_thread() {
    on_both(|env| async move {
        let reg = env.reg;
        let run = reg.create_run("exp", "sync", &json!({})).await?;
        let handle = tokio::runtime::Handle::current();
        let w = reg.metric_writer(run);
        // The tch training loop: a plain thread that logs and ends with Handle::block_on.
        let summary = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for step in 0..1000 {
                w.log("loss", step, 1000.0 - step as f64)?;
            }
            handle.block_on(w.finish())
        })
        .await?;
        summary?;
        let s = reg.metric_summaries(run).await?;
        assert_eq!(
            (s[0].count, s[0].min, s[0].max, s[0].last),
            (1000, 1.0, 1000.0, 1.0)
        );
        Ok(())
    })
    .await;
}
