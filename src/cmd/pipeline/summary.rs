//! The summary of a pipeline run (`--format json` prints it whole): the stages, the counts and
//! rates of each, retrieval before and after filtering, the gate's verdict with both figures,
//! and where to look next.
use super::state::TrainDone;
use super::{Pipeline, StageReport};
use crate::output::{Format, Table};
use anyhow::Result;
use serde_json::{json, Value};

impl Pipeline<'_> {
    pub(super) fn summary(&self, stages: Vec<StageReport>, elapsed_s: f64) -> Result<Value> {
        let s = &self.state;
        let ingest = self.need(&s.ingest, "ingest")?;
        let rate = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let trained = |t: &TrainDone| {
            json!({"run": t.run, "dataset": t.dataset, "init": t.init, "steps": t.step,
                   "checkpoint": t.checkpoint, "r1_t2i": t.r1_t2i, "r1_i2t": t.r1_i2t})
        };
        let default_registry = super::Context::new(None, self.ctx.home.clone()).registry_url;
        let global = if self.ctx.registry_url == default_registry {
            format!("--home {}", self.ctx.home.display())
        } else {
            format!("--registry {}", self.ctx.registry_url)
        };
        let p = &self.cfg.promote;
        let train_name = ingest.train.spec.split('@').next().unwrap_or_default();
        let corpus = s.corpus.as_ref().map(|c| {
            json!({"train_rows": c.train_rows, "heldout_rows": c.heldout_rows,
                   "noisy_rows": c.noisy_rows, "exact_duplicates": c.exact_duplicates,
                   "near_duplicates": c.near_duplicates})
        });
        let filter = s.filter.as_ref().map(|f| {
            json!({"dataset": f.dataset, "checkpoint": f.checkpoint, "scored": f.scored,
                   "kept": f.kept, "filter_rate": 1.0 - rate(f.kept, f.scored)})
        });
        let promoted = s.promote.as_ref().map(|d| {
            json!({"model": d.model, "alias": d.alias, "checkpoint": d.checkpoint,
                   "from": d.chosen, "outcome": d.outcome, "gate": d.gate,
                   "gate_result": d.gate_result, "event": d.event})
        });
        Ok(json!({
            "name": self.cfg.name,
            "run": self.number,
            "work_dir": self.work,
            "registry": self.ctx.registry_url,
            "elapsed_s": elapsed_s,
            "stages": stages,
            "plan": s.plan,
            "corpus": corpus,
            "ingest": {
                "dataset": ingest.train.spec, "ingested": ingest.ingested,
                "input_rows": ingest.train.input_rows, "success": ingest.train.success,
                "duplicates": ingest.train.duplicates,
                "dedupe_rate": rate(ingest.train.duplicates, ingest.train.input_rows),
                "eval": ingest.eval.spec, "eval_rows": ingest.eval.success
            },
            "filter": filter,
            "train_raw": s.train_raw.as_ref().map(trained),
            "train_filtered": s.train_filtered.as_ref().map(trained),
            "eval": s.eval,
            "promoted": promoted,
            "next": [
                format!("albef {global} serve --addr 127.0.0.1:8080   # then open http://127.0.0.1:8080"),
                format!("albef {global} ckpt history --model {}", p.model),
                format!("albef {global} datasets show {train_name}"),
                format!("albef {global} runs list --experiment pipeline-{}", self.cfg.name)
            ]
        }))
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The summary as a two-column table, then the commands to look further.
pub(super) fn print(s: &Value, format: Format) -> Result<()> {
    let mut t = Table::new(["item", "value"]);
    let mut add = |k: &str, v: String| t.push(vec![json!(k), json!(v)]);
    add("run", format!("{} {}", text(&s["name"]), s["run"]));
    for st in s["stages"].as_array().into_iter().flatten() {
        add(
            &format!("stage {}", text(&st["stage"])),
            format!(
                "{} ({:.1} s)",
                text(&st["status"]),
                st["elapsed_s"].as_f64().unwrap_or_default()
            ),
        );
    }
    let c = &s["corpus"];
    if !c.is_null() {
        add(
            "corpus: training rows (noisy, exact + near duplicates)",
            format!(
                "{} ({}, {} + {})",
                c["train_rows"], c["noisy_rows"], c["exact_duplicates"], c["near_duplicates"]
            ),
        );
    }
    let i = &s["ingest"];
    add(
        "training data: dataset, input rows, stored, duplicates",
        format!(
            "{} {} {} {} (dedupe rate {:.1}%)",
            text(&i["dataset"]),
            i["input_rows"],
            i["success"],
            i["duplicates"],
            100.0 * i["dedupe_rate"].as_f64().unwrap_or_default()
        ),
    );
    add(
        "evaluation set",
        format!("{} ({} pairs)", text(&i["eval"]), i["eval_rows"]),
    );
    let f = &s["filter"];
    if !f.is_null() {
        add(
            "filtered: dataset, by checkpoint, scored, kept",
            format!(
                "{} {} {} {} (removed {:.1}%)",
                text(&f["dataset"]),
                f["checkpoint"],
                f["scored"],
                f["kept"],
                100.0 * f["filter_rate"].as_f64().unwrap_or_default()
            ),
        );
    }
    for (key, label) in [("train_raw", "before"), ("train_filtered", "after")] {
        let r = &s[key];
        if r.is_null() {
            continue;
        }
        add(
            &format!("R@1 t2i / i2t {label} filtering"),
            format!(
                "{:.2}% / {:.2}% (run {}, checkpoint {}, {} steps on {})",
                r["r1_t2i"].as_f64().unwrap_or_default(),
                r["r1_i2t"].as_f64().unwrap_or_default(),
                r["run"],
                r["checkpoint"],
                r["steps"],
                text(&r["dataset"])
            ),
        );
    }
    let p = &s["promoted"];
    if p.is_null() {
        add("promoted", "nothing: no new pairs to train on".into());
    } else {
        add(
            &format!("{}@{}", text(&p["model"]), text(&p["alias"])),
            format!(
                "{}: checkpoint {} ({})",
                text(&p["outcome"]),
                p["checkpoint"],
                text(&p["from"])
            ),
        );
        add("gate", text(&p["gate_result"]));
    }
    add("run folder", text(&s["work_dir"]));
    add(
        "elapsed s",
        format!("{:.1}", s["elapsed_s"].as_f64().unwrap_or_default()),
    );
    t.print(format)?;
    if format == Format::Table {
        println!("\nnext:");
        for line in s["next"].as_array().into_iter().flatten() {
            println!("  {}", text(line));
        }
    }
    Ok(())
}
