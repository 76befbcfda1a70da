//! Runs, params, tags and metrics on both backends: the summary matches the points, bad input
//! is refused with a clear error and writes nothing, every double a client logs reads back
//! bit for bit.
mod common;
use albef_registry::{LoggedPoint, MetricWriterOptions, RunSearch, RunStatus};
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

/// The doubles a client may log that a plain REAL column or JSON number would not keep.
fn awkward_values() -> Vec<f64> {
    vec![
        -0.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.1 + 0.2,
        1e-320,
        f64::MAX,
        0.0,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_batch_keeps_every_value_bit_for_bit() {
    on_both(|env| async move {
        let reg = env.reg;
        let run = reg.create_run("exp", "exact", &json!({})).await?;
        let points: Vec<LoggedPoint> = awkward_values()
            .into_iter()
            .enumerate()
            .map(|(i, value)| LoggedPoint {
                key: "x".into(),
                step: i as i64,
                value,
                logged_at: 1_000 + i as i64,
            })
            .collect();
        reg.log_batch(
            run,
            &[("p".into(), "1".into())],
            &[("t".into(), "v".into())],
            &points,
        )
        .await?;
        let history = reg.metric_history(run, "x").await?;
        assert_eq!(history.len(), points.len(), "{}", env.backend);
        for (got, sent) in history.iter().zip(&points) {
            assert_eq!((got.step, got.logged_at), (sent.step, sent.logged_at));
            assert_eq!(
                got.value.to_bits(),
                sent.value.to_bits(),
                "{}: step {}",
                env.backend,
                sent.step
            );
        }
        // NaN orders above every number (as Postgres orders it), so it is the max.
        let s = &reg.metric_summaries(run).await?[0];
        assert_eq!(
            (s.last.to_bits(), s.min, s.count),
            (0.0f64.to_bits(), f64::NEG_INFINITY, 8)
        );
        assert!(s.max.is_nan(), "{}: {s:?}", env.backend);
        let latest = reg.latest_points(run).await?;
        assert_eq!(latest[0].1.logged_at, 1_007);
        // Search compares NaN as the largest value on both backends.
        let nan_run = reg.create_run("exp", "nan-last", &json!({})).await?;
        let nan = LoggedPoint {
            key: "x".into(),
            step: 0,
            value: f64::NAN,
            logged_at: 5,
        };
        reg.log_batch(nan_run, &[], &[], &[nan]).await?;
        let hits = reg
            .search_runs(&RunSearch {
                filter: Some("metrics.x > 1e308".into()),
                ..Default::default()
            })
            .await?;
        assert_eq!(
            hits.iter().map(|h| h.run.id).collect::<Vec<_>>(),
            vec![nan_run]
        );
        let detail = serde_json::to_value(reg.run_detail(nan_run).await?)?;
        assert_eq!(
            detail["metrics"][0]["last"], "NaN",
            "JSON keeps NaN as a string"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_batch_is_all_or_nothing_and_runs_can_be_deleted() {
    on_both(|env| async move {
        let reg = env.reg;
        let run = reg.create_run("exp", "batch", &json!({})).await?;
        reg.log_params(run, &[("lr".into(), "0.1".into())]).await?;
        let point = LoggedPoint {
            key: "loss".into(),
            step: 1,
            value: 2.0,
            logged_at: 7,
        };
        let e = err_text(
            reg.log_batch(
                run,
                &[("lr".into(), "0.2".into())],
                &[("t".into(), "v".into())],
                std::slice::from_ref(&point),
            )
            .await,
        );
        assert!(e.contains("cannot change"), "{e}");
        let d = reg.run_detail(run).await?;
        assert!(
            d.tags.is_empty() && d.metrics.is_empty(),
            "{}: nothing of the batch: {d:?}",
            env.backend
        );
        reg.log_batch(run, &[], &[("t".into(), "v".into())], &[point])
            .await?;
        reg.delete_tag(run, "t").await?;
        assert!(err_text(reg.delete_tag(run, "t").await).contains("does not exist"));
        reg.rename_run(run, "renamed").await?;
        assert_eq!(reg.run(run).await?.name, "renamed");
        reg.finish_run_at(run, RunStatus::Killed, 42).await?;
        assert_eq!(reg.run(run).await?.end_time, Some(42));
        reg.delete_run(run).await?;
        assert!(err_text(reg.run(run).await).contains("does not exist"));
        assert!(reg.metric_history(run, "loss").await?.is_empty());
        assert!(err_text(reg.log_batch(run, &[], &[], &[]).await).contains("does not exist"));
        let e = reg.create_experiment("made").await?;
        assert_eq!(reg.experiment("made").await?, e);
        assert!(err_text(reg.create_experiment("made").await).contains("already exists"));
        assert_eq!(
            reg.experiments()
                .await?
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>(),
            ["exp", "made"]
        );
        Ok(())
    })
    .await;
}
