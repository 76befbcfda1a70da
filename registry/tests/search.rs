//! The filter language against real data on both backends.
mod common;
use albef_registry::{RunSearch, RunStatus};
use common::{err_text, on_both};
use serde_json::json;

async fn ids(
    reg: &albef_registry::Registry,
    filter: &str,
    order: Option<&str>,
) -> anyhow::Result<Vec<i64>> {
    let hits = reg
        .search_runs(&RunSearch {
            filter: Some(filter.into()),
            order_by: order.map(str::to_string),
            ..Default::default()
        })
        .await?;
    Ok(hits.into_iter().map(|h| h.run.id).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_grammar_cases() {
    on_both(|env| async move {
        let reg = env.reg;
        // run i: lr = 0.1 * (i % 3 + 1) as text, loss history i+3, i+1, i+2 (min i+1, last i+2).
        let mut runs = Vec::new();
        for i in 0..6i64 {
            let exp = if i < 4 { "a" } else { "b" };
            let run = reg.create_run(exp, &format!("run-{i}"), &json!({})).await?;
            let lr = ["0.1", "0.2", "0.5"][(i % 3) as usize];
            reg.log_params(
                run,
                &[("lr".into(), lr.into()), ("opt.name".into(), "adam".into())],
            )
            .await?;
            reg.set_tags(run, &[("my tag".into(), format!("t{i}"))])
                .await?;
            let w = reg.metric_writer(run);
            for (step, v) in [(0, 3), (1, 1), (2, 2)] {
                w.log("loss", step, (i + v) as f64)?;
            }
            w.finish().await?;
            if i % 2 == 1 {
                reg.finish_run(run, RunStatus::Finished).await?;
            }
            runs.push(run);
        }
        let r = |i: usize| runs[i];
        assert_eq!(
            ids(
                &reg,
                "min(metrics.loss) < 2 OR params.lr IN ('0.5')",
                Some("id")
            )
            .await?,
            vec![r(0), r(2), r(5)]
        );
        assert_eq!(
            ids(&reg, "metrics.loss <= 3", Some("id ASC")).await?,
            vec![r(0), r(1)]
        );
        assert_eq!(ids(&reg, "max(metrics.loss) = 8", None).await?, vec![r(5)]);
        assert_eq!(
            ids(&reg, "params.lr = 0.2 AND status = 'finished'", None).await?,
            vec![r(1)]
        );
        assert_eq!(
            ids(
                &reg,
                "params.lr != '0.1' AND (experiment = 'b' OR name LIKE '%-1')",
                Some("id")
            )
            .await?,
            vec![r(1), r(4), r(5)]
        );
        assert_eq!(
            ids(&reg, "params.lr NOT IN ('0.1', '0.2')", Some("id")).await?,
            vec![r(2), r(5)]
        );
        assert_eq!(
            ids(
                &reg,
                "tags.`my tag` = 't3' AND params.\"opt.name\" = 'adam'",
                None
            )
            .await?,
            vec![r(3)]
        );
        assert_eq!(
            ids(&reg, "params.missing = 'x' OR metrics.missing > 0", None).await?,
            Vec::<i64>::new()
        );
        assert_eq!(
            ids(
                &reg,
                &format!("id IN ({}, {})", r(1), r(3)),
                Some("id DESC")
            )
            .await?,
            vec![r(3), r(1)]
        );
        // Order by min(loss) descending, with the ordering value returned.
        let hits = reg
            .search_runs(&RunSearch {
                experiment: Some("a".into()),
                filter: Some("start_time > 0".into()),
                order_by: Some("min(metrics.loss) DESC".into()),
                limit: Some(2),
            })
            .await?;
        assert_eq!(
            hits.iter().map(|h| h.run.id).collect::<Vec<_>>(),
            vec![r(3), r(2)]
        );
        assert_eq!(
            hits[0].values,
            vec![("min(metrics.loss)".to_string(), json!(4.0))]
        );

        // Ordered first by a metric that only some runs have: those runs by it (ties by the
        // next term, then newest first), then the others; the limit cuts across both parts.
        for (i, v) in [(1, 0.5), (4, 0.5), (2, 0.25)] {
            let w = reg.metric_writer(r(i));
            w.log("acc", 0, v)?;
            w.finish().await?;
        }
        let by = |order: &'static str, limit: i64| {
            let reg = reg.clone();
            async move {
                let hits = reg
                    .search_runs(&RunSearch {
                        order_by: Some(order.into()),
                        limit: Some(limit),
                        ..Default::default()
                    })
                    .await?;
                anyhow::Ok(
                    hits.into_iter()
                        .map(|h| (h.run.id, h.values[0].1.clone()))
                        .collect::<Vec<_>>(),
                )
            }
        };
        let (acc, none) = (|v: f64| json!(v), json!(null));
        assert_eq!(
            by("metrics.acc ASC, name DESC", 10).await?,
            vec![
                (r(2), acc(0.25)),
                (r(4), acc(0.5)),
                (r(1), acc(0.5)),
                (r(5), none.clone()),
                (r(3), none.clone()),
                (r(0), none.clone())
            ]
        );
        assert_eq!(
            by("metrics.acc ASC, name DESC", 2).await?,
            vec![(r(2), acc(0.25)), (r(4), acc(0.5))]
        );
        assert_eq!(
            by("metrics.acc DESC", 4).await?,
            vec![
                (r(4), acc(0.5)),
                (r(1), acc(0.5)),
                (r(2), acc(0.25)),
                (r(5), none.clone())
            ]
        );
        assert_eq!(
            by("params.lr DESC", 3)
                .await?
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>(),
            vec![r(5), r(2), r(4)]
        );

        let e = err_text(ids(&reg, "metrics.loss < 'x'", None).await);
        assert!(
            e.contains("filter: metrics.loss compares with numbers") && e.contains("column 16"),
            "{e}"
        );
        let e = err_text(ids(&reg, "metrics.loss >", None).await);
        assert!(e.contains("expected a value after '>' at column 15"), "{e}");
        let e = err_text(ids(&reg, "id = 1", Some("loss")).await);
        assert!(e.contains("order-by: unknown field 'loss'"), "{e}");
        let e = err_text(
            reg.search_runs(&RunSearch {
                experiment: Some("zzz".into()),
                ..Default::default()
            })
            .await,
        );
        assert!(e.contains("no experiment named \"zzz\""), "{e}");
        let e = err_text(
            reg.search_runs(&RunSearch {
                limit: Some(0),
                ..Default::default()
            })
            .await,
        );
        assert!(e.contains("limit 0 is out of range"), "{e}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn like_is_case_sensitive_with_the_same_escapes_on_both_backends() {
    on_both(|env| async move {
        let reg = env.reg;
        let mut runs = Vec::new();
        for name in ["abc", "Abc", "a%c", "a*c", "a[b]c"] {
            runs.push(reg.create_run("e", name, &json!({})).await?);
        }
        let r = |i: usize| runs[i];
        let like = |pattern: &'static str| {
            let reg = reg.clone();
            async move { ids(&reg, &format!("name LIKE '{pattern}'"), Some("id")).await }
        };
        assert_eq!(like("A%").await?, vec![r(1)]);
        assert_eq!(like("a%").await?, vec![r(0), r(2), r(3), r(4)]);
        assert_eq!(like("ABC").await?, Vec::<i64>::new());
        assert_eq!(like("a_c").await?, vec![r(0), r(2), r(3)]);
        // `\` takes the next character literally; GLOB's own wildcards mean themselves.
        assert_eq!(like("a\\%c").await?, vec![r(2)]);
        assert_eq!(like("a*c").await?, vec![r(3)]);
        assert_eq!(like("a[b]%").await?, vec![r(4)]);
        assert_eq!(
            ids(&reg, "name NOT LIKE 'a%'", Some("id")).await?,
            vec![r(1)]
        );
        let e = err_text(ids(&reg, "name LIKE 'a\\'", None).await);
        assert!(e.contains("lone") && e.contains("column 11"), "{e}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_at_every_limit_run_on_both_backends() {
    on_both(|env| async move {
        let reg = env.reg;
        let run = reg.create_run("e", "r", &json!({})).await?;
        reg.log_params(run, &[("lr".into(), "0.1".into())]).await?;
        let w = reg.metric_writer(run);
        w.log("loss", 0, 1.0)?;
        w.finish().await?;
        let search = |filter: String, order: &'static str| {
            let reg = reg.clone();
            async move { ids(&reg, &filter, Some(order)).await }
        };
        let order8 = "metrics.loss, params.lr, tags.t, min(metrics.loss), max(metrics.loss), \
                      name, status, id";
        // 100 comparisons over the metric and param tables and the runs, ANDed and ORed.
        let hundred = |pick: fn(usize) -> String| (0..100).map(pick).collect::<Vec<_>>();
        let ands =
            hundred(|i| ["metrics.loss < 2", "params.lr = '0.1'", "id > 0"][i % 3].to_string());
        let ors = hundred(|i| match i {
            99 => "name = 'r'".to_string(),
            _ => ["metrics.loss > 5", "params.lr = 'x'", "tags.t IN ('x')"][i % 3].to_string(),
        });
        for order in ["id", order8] {
            assert_eq!(search(ands.join(" AND "), order).await?, vec![run]);
            assert_eq!(search(ors.join(" OR "), order).await?, vec![run]);
        }
        // 32 levels of parentheses.
        let deep = format!("{}metrics.loss < 2{}", "(".repeat(32), ")".repeat(32));
        assert_eq!(search(deep, order8).await?, vec![run]);
        // An IN list of 1000 values (8 KB at most in all).
        let list = (0..1000)
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(",");
        let filter = format!("params.lr NOT IN ({list})");
        assert!(filter.len() <= 8192);
        assert_eq!(search(filter, order8).await?, vec![run]);
        Ok(())
    })
    .await;
}
