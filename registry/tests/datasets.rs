//! Dataset versions, lineage and shards, and work leases, on both backends.
mod common;
use albef_registry::{DatasetStatus, NewDatasetVersion, NewShard};
use common::{err_text, on_both};
use serde_json::json;
use std::time::Duration;

fn version(parent: Option<i64>, stage: &str) -> NewDatasetVersion {
    NewDatasetVersion {
        dataset: "cc3m".into(),
        uri: "/data/cc3m".into(),
        parent,
        stage: stage.into(),
        params: json!({"rows_per_shard": 1000}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn versions_lineage_and_shards() {
    on_both(|env| async move {
        let reg = env.reg;
        let v1 = reg.create_dataset_version(version(None, "ingest")).await?;
        assert_eq!((v1.version, v1.status), (1, DatasetStatus::Building));
        for i in 0..3 {
            reg.register_shard(
                v1.id,
                NewShard {
                    index: i,
                    uri: format!("{i}.parquet"),
                    rows: 1000,
                    stats: json!({"ok": 900}),
                },
            )
            .await?;
        }
        // Idempotent on (version, index): the retry replaces the row.
        reg.register_shard(
            v1.id,
            NewShard {
                index: 2,
                uri: "2.parquet".into(),
                rows: 500,
                stats: json!({}),
            },
        )
        .await?;
        assert!(err_text(reg.dataset_version("cc3m").await).contains("has no finished version"));
        reg.finish_dataset_version(v1.id, json!({"success": 2500}))
            .await?;
        let e = err_text(
            reg.register_shard(
                v1.id,
                NewShard {
                    index: 9,
                    uri: "x".into(),
                    rows: 1,
                    stats: json!({}),
                },
            )
            .await,
        );
        assert!(e.contains("is FINISHED"), "{e}");
        let v2 = reg
            .create_dataset_version(version(Some(v1.id), "filter"))
            .await?;
        assert_eq!((v2.version, v2.parent_id), (2, Some(v1.id)));

        let latest = reg.dataset_version("cc3m").await?;
        assert_eq!((latest.id, latest.shards, latest.rows), (v1.id, 3, 2500));
        assert_eq!(latest.stats, Some(json!({"success": 2500})));
        assert_eq!(reg.dataset_version("cc3m@2").await?.id, v2.id);
        assert_eq!(
            reg.shards(v1.id)
                .await?
                .iter()
                .map(|s| s.rows)
                .collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
        assert_eq!(reg.dataset_versions(Some("cc3m")).await?.len(), 2);
        assert!(err_text(reg.dataset_version("cc3m@7").await).contains("has no version 7"));
        assert!(err_text(reg.dataset_version("cc3m@x").await).contains("is not a number"));
        assert!(err_text(
            reg.create_dataset_version(version(Some(999), "filter"))
                .await
        )
        .contains("parent dataset version 999 does not exist"));
        assert!(err_text(reg.finish_dataset_version(v1.id, json!({})).await)
            .contains("already FINISHED"));
        let run = reg.create_run("exp", "r", &json!({})).await?;
        reg.set_run_dataset(run, v2.id).await?;
        assert_eq!(reg.run(run).await?.dataset_version_id, Some(v2.id));
        assert!(err_text(reg.set_run_dataset(run, 999).await)
            .contains("dataset version 999 does not exist"));
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_versions_get_distinct_numbers() {
    on_both(|env| async move {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let reg = env.reg.clone();
                tokio::spawn(
                    async move { reg.create_dataset_version(version(None, "ingest")).await },
                )
            })
            .collect();
        let mut numbers = Vec::new();
        for t in tasks {
            numbers.push(t.await??.version);
        }
        numbers.sort();
        assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_leases() {
    on_both(|env| async move {
        let reg = env.reg;
        let long = Duration::from_secs(60);
        assert!(reg.try_claim_unit("urls", "chunk-1", "w1", long).await?);
        assert!(!reg.try_claim_unit("urls", "chunk-1", "w2", long).await?);
        assert!(
            reg.try_claim_unit("urls", "chunk-1", "w1", long).await?,
            "the holder may re-claim"
        );
        assert!(reg.renew("urls", "chunk-1", "w1", long).await?);
        assert!(!reg.renew("urls", "chunk-1", "w2", long).await?);
        // An expired lease can be taken over; the old owner then cannot complete.
        assert!(
            reg.try_claim_unit("urls", "chunk-2", "w1", Duration::from_millis(1))
                .await?
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(reg.try_claim_unit("urls", "chunk-2", "w2", long).await?);
        assert!(!reg.complete_unit("urls", "chunk-2", "w1").await?);
        assert!(reg.complete_unit("urls", "chunk-2", "w2").await?);
        assert!(
            !reg.try_claim_unit("urls", "chunk-2", "w3", long).await?,
            "done units stay done"
        );
        assert_eq!(reg.done_units("urls").await?, vec!["chunk-2".to_string()]);
        Ok(())
    })
    .await;
}
