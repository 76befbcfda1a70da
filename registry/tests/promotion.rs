//! Checkpoints and the promotion workflow on both backends: gates, rollback, alias removal,
//! verdicts of gates evaluated by the caller (promotions and recorded refusals), sha256 refusal,
//! and 16 concurrent promotions of one alias.
mod common;
use albef_registry::models::JudgedPromotion;
use albef_registry::{PromotionRequest, Registry};
use common::{err_text, on_both};
use serde_json::json;
use sha2::Digest;
use std::path::Path;

async fn ckpt(reg: &Registry, run: i64, dir: &Path, n: i64, r1: f64) -> anyhow::Result<i64> {
    let path = dir.join(format!("ckpt-{n}.safetensors"));
    std::fs::write(&path, format!("weights {n}"))?;
    reg.register_checkpoint(run, &path, n * 100, &[("r1".into(), r1)])
        .await
}

fn req(checkpoint: i64, require: Option<&str>) -> PromotionRequest {
    PromotionRequest {
        checkpoint,
        model: "albef".into(),
        alias: "prod".into(),
        require: require.map(str::to_string),
        reason: Some("test".into()),
        actor: "tester".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_promote_gate_and_rollback() {
    on_both(|env| async move {
        let reg = env.reg;
        let run = reg.create_run("exp", "r", &json!({})).await?;
        let a = ckpt(&reg, run, &env.dir, 1, 0.5).await?;
        let c = reg.checkpoint(a).await?;
        assert_eq!(c.bytes, "weights 1".len() as i64);
        let expected: String = sha2::Sha256::digest(b"weights 1")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(c.sha256, expected);
        assert!(Path::new(&c.uri).is_absolute());
        assert_eq!(c.metric("r1"), Some(0.5));

        let gate = Some("metrics.r1 >= current");
        let e1 = reg.promote(&req(a, gate)).await?;
        assert_eq!(
            (e1.previous_checkpoint_id, e1.new_checkpoint_id),
            (None, Some(a))
        );
        assert!(e1
            .gate_result
            .as_deref()
            .unwrap()
            .contains("no current holder"));
        assert_eq!(reg.resolve_checkpoint("albef@prod").await?.id, a);
        assert_eq!(
            reg.checkpoint(a).await?.aliases,
            vec!["albef@prod".to_string()]
        );

        let b = ckpt(&reg, run, &env.dir, 2, 0.7).await?;
        reg.promote(&req(b, gate)).await?;
        // A worse candidate fails the gate: nothing changes, no event.
        let worse = ckpt(&reg, run, &env.dir, 3, 0.6).await?;
        let e = err_text(reg.promote(&req(worse, gate)).await);
        assert!(
            e.contains("metrics.r1 = 0.6 >= current 0.7") && e.contains("nothing changed"),
            "{e}"
        );
        assert_eq!(reg.resolve_checkpoint("albef@prod").await?.id, b);
        assert_eq!(reg.promotion_history("albef").await?.len(), 2);
        // A numeric bound.
        let e = err_text(reg.promote(&req(worse, Some("metrics.r1 > 0.9"))).await);
        assert!(e.contains("is false"), "{e}");
        assert!(err_text(reg.promote(&req(b, None)).await).contains("already holds albef@prod"));

        let c3 = ckpt(&reg, run, &env.dir, 4, 0.9).await?;
        reg.promote(&req(c3, None)).await?;
        // Rollback walks back one promotion at a time: c3 -> b -> a, then nothing is left.
        let r = reg.rollback("albef", "prod", "tester", Some("bad")).await?;
        assert_eq!(
            (
                r.kind.as_str(),
                r.previous_checkpoint_id,
                r.new_checkpoint_id
            ),
            ("rollback", Some(c3), Some(b))
        );
        reg.rollback("albef", "prod", "tester", None).await?;
        assert_eq!(reg.resolve_checkpoint("albef@prod").await?.id, a);
        let e = err_text(reg.rollback("albef", "prod", "tester", None).await);
        assert!(e.contains("no earlier holder"), "{e}");
        let h = reg.promotion_history("albef").await?;
        let kinds: Vec<&str> = h.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["promote", "promote", "promote", "rollback", "rollback"]
        );
        assert!(h.iter().all(|e| e.actor == "tester"));
        let listed = reg.checkpoints(Some("albef")).await?;
        assert_eq!(
            listed.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![c3, b, a]
        );
        assert!(err_text(reg.checkpoints(Some("nope")).await).contains("no model named \"nope\""));
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_an_alias_is_recorded_and_ends_its_chain() {
    on_both(|env| async move {
        let reg = env.reg;
        let run = reg.create_run("exp", "r", &json!({})).await?;
        let a = ckpt(&reg, run, &env.dir, 1, 0.5).await?;
        let b = ckpt(&reg, run, &env.dir, 2, 0.6).await?;
        reg.promote(&req(a, None)).await?;
        reg.promote(&req(b, None)).await?;
        let e = reg
            .remove_alias("albef", "prod", "mlflow", Some("retired"))
            .await?;
        assert_eq!(
            (
                e.kind.as_str(),
                e.previous_checkpoint_id,
                e.new_checkpoint_id
            ),
            ("remove", Some(b), None)
        );
        assert!(err_text(reg.resolve_checkpoint("models:/albef@prod").await)
            .contains("no checkpoint holds alias \"prod\""));
        assert!(reg.checkpoint(b).await?.aliases.is_empty());
        let e = err_text(reg.remove_alias("albef", "prod", "mlflow", None).await);
        assert!(e.contains("albef@prod does not exist"), "{e}");
        assert!(
            err_text(reg.rollback("albef", "prod", "tester", None).await)
                .contains("no checkpoint holds albef@prod")
        );
        // A new promotion starts a new chain: rollback does not reach past the removal.
        reg.promote(&req(a, None)).await?;
        assert_eq!(reg.resolve_checkpoint("models:/albef@prod").await?.id, a);
        let e = err_text(reg.rollback("albef", "prod", "tester", None).await);
        assert!(e.contains("no earlier holder"), "{e}");
        let kinds: Vec<String> = reg
            .promotion_history("albef")
            .await?
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["promote", "promote", "remove", "promote"]);
        Ok(())
    })
    .await;
}

fn judged(checkpoint: i64, compared_with: Option<i64>, passed: bool) -> JudgedPromotion {
    JudgedPromotion {
        checkpoint,
        model: "albef".into(),
        alias: "prod".into(),
        compared_with,
        gate: "r1_t2i >= the holder's".into(),
        gate_result: format!(
            "{}: 12.5 vs 10.0",
            if passed { "passed" } else { "refused" }
        ),
        passed,
        reason: Some("pipeline".into()),
        actor: "pipeline".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn judged_verdicts_promote_or_record_a_refusal() {
    on_both(|env| async move {
        let reg = env.reg;
        let run = reg.create_run("exp", "r", &json!({})).await?;
        let a = ckpt(&reg, run, &env.dir, 1, 0.5).await?;
        let b = ckpt(&reg, run, &env.dir, 2, 0.6).await?;
        let c = ckpt(&reg, run, &env.dir, 3, 0.7).await?;
        assert_eq!(reg.alias_holder("albef", "prod").await?, None);
        let e = reg.judge_promotion(&judged(a, None, true)).await?;
        assert_eq!((e.kind.as_str(), e.new_checkpoint_id), ("promote", Some(a)));
        assert_eq!(e.gate_result.as_deref(), Some("passed: 12.5 vs 10.0"));
        reg.judge_promotion(&judged(b, Some(a), true)).await?;
        // A refusal is recorded and moves nothing.
        let e = reg.judge_promotion(&judged(c, Some(b), false)).await?;
        assert_eq!(
            (
                e.kind.as_str(),
                e.previous_checkpoint_id,
                e.new_checkpoint_id
            ),
            ("refused", Some(b), Some(c))
        );
        assert_eq!(reg.alias_holder("albef", "prod").await?, Some(b));
        assert!(reg.checkpoint(c).await?.aliases.is_empty());
        let held: Vec<i64> = reg
            .checkpoints(Some("albef"))
            .await?
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(held, [b, a], "a refused candidate never held the alias");
        // A verdict against a holder that has moved since is refused whole.
        let e = err_text(reg.judge_promotion(&judged(c, Some(a), true)).await);
        assert!(
            e.contains("is held by checkpoint") && e.contains("nothing changed"),
            "{e}"
        );
        // Rollback passes over the refusal to the holder before b.
        let r = reg.rollback("albef", "prod", "tester", None).await?;
        assert_eq!(r.new_checkpoint_id, Some(a));
        let kinds: Vec<String> = reg
            .promotion_history("albef")
            .await?
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["promote", "promote", "refused", "rollback"]);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changed_or_missing_files_are_refused() {
    on_both(|env| async move {
        let reg = env.reg;
        let run = reg.create_run("exp", "r", &json!({})).await?;
        let a = ckpt(&reg, run, &env.dir, 1, 0.5).await?;
        let b = ckpt(&reg, run, &env.dir, 2, 0.6).await?;
        reg.promote(&req(a, None)).await?;
        std::fs::write(env.dir.join("ckpt-2.safetensors"), "tampered")?;
        let e = err_text(reg.promote(&req(b, None)).await);
        assert!(e.contains("changed after registration"), "{e}");
        std::fs::remove_file(env.dir.join("ckpt-2.safetensors"))?;
        let e = err_text(reg.promote(&req(b, None)).await);
        assert!(e.contains("is missing"), "{e}");
        assert_eq!(reg.resolve_checkpoint("albef@prod").await?.id, a);
        assert_eq!(reg.promotion_history("albef").await?.len(), 1);

        // Rollback refuses a previous holder whose file changed.
        let c = ckpt(&reg, run, &env.dir, 3, 0.7).await?;
        reg.promote(&req(c, None)).await?;
        std::fs::write(env.dir.join("ckpt-1.safetensors"), "tampered")?;
        let e = err_text(reg.rollback("albef", "prod", "tester", None).await);
        assert!(
            e.contains("cannot roll albef@prod back to checkpoint"),
            "{e}"
        );
        assert_eq!(reg.resolve_checkpoint("albef@prod").await?.id, c);

        let e = err_text(
            reg.register_checkpoint(run, &env.dir.join("none.pt"), 1, &[])
                .await,
        );
        assert!(
            e.contains("cannot find checkpoint file") && e.contains("none.pt"),
            "{e}"
        );
        let e = err_text(
            reg.register_checkpoint(
                run,
                &env.dir.join("ckpt-3.safetensors"),
                1,
                &[("r1".into(), f64::NAN)],
            )
            .await,
        );
        assert!(e.contains("not a finite number"), "{e}");
        let e = err_text(
            reg.register_checkpoint(999, &env.dir.join("ckpt-3.safetensors"), 1, &[])
                .await,
        );
        assert!(e.contains("run 999 does not exist"), "{e}");
        assert!(err_text(reg.checkpoint(12345).await).contains("checkpoint 12345 does not exist"));
        assert!(err_text(reg.resolve_checkpoint("albef@staging").await)
            .contains("no checkpoint holds alias"));
        assert!(err_text(reg.promote(&req(12345, None)).await)
            .contains("checkpoint 12345 does not exist"));
        let e = err_text(reg.promote(&req(c, Some("metrics.r1 >= best"))).await);
        assert!(
            e.contains("gate: expected 'current' or a number") && e.contains("column 15"),
            "{e}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_promotions_leave_one_holder_and_a_chain() {
    on_both(|env| async move {
        let reg = env.reg;
        let run = reg.create_run("exp", "r", &json!({})).await?;
        let mut ids = Vec::new();
        for n in 0..16 {
            // r1 values in shuffled order so that some promotions fail the gate.
            ids.push(ckpt(&reg, run, &env.dir, n, ((n * 7) % 16) as f64).await?);
        }
        let tasks: Vec<_> = ids
            .iter()
            .map(|&id| {
                let reg = reg.clone();
                tokio::spawn(
                    async move { reg.promote(&req(id, Some("metrics.r1 >= current"))).await },
                )
            })
            .collect();
        let mut ok = Vec::new();
        for t in tasks {
            match t.await? {
                Ok(e) => ok.push(e),
                Err(e) => assert!(format!("{e:#}").contains("refused"), "{e:#}"),
            }
        }
        assert!(!ok.is_empty());
        let history = reg.promotion_history("albef").await?;
        assert_eq!(history.len(), ok.len(), "one event per successful call");
        // The history is a chain: each event starts where the previous ended, r1 never drops.
        let mut prev = None;
        let mut best = f64::NEG_INFINITY;
        for e in &history {
            assert_eq!(e.previous_checkpoint_id, prev);
            let r1 = reg
                .checkpoint(e.new_checkpoint_id.expect("only promotions"))
                .await?
                .metric("r1")
                .unwrap();
            assert!(r1 >= best);
            best = r1;
            prev = e.new_checkpoint_id;
        }
        let holders: Vec<_> = reg
            .checkpoints(None)
            .await?
            .into_iter()
            .filter(|c| !c.aliases.is_empty())
            .collect();
        assert_eq!(holders.len(), 1, "exactly one holder");
        assert_eq!(Some(holders[0].id), prev);
        assert_eq!(holders[0].metric("r1"), Some(15.0));
        Ok(())
    })
    .await;
}
