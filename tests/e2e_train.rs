//! Training end to end through the CLI, on an embedded SQLite registry: a synthetic corpus
//! served over HTTP by this test, ingested with `albef ingest` (train and held-out splits),
//! then albef-tiny trained on CPU three ways: uninterrupted (with periodic held-out
//! evaluation), interrupted by SIGINT (a checkpoint, status KILLED), and resumed from that
//! checkpoint. The resumed run's losses must equal the uninterrupted run's bit for bit, every
//! checkpoint's registered sha256 must match its file, and `albef eval` must print the six
//! recall figures of the final checkpoint.
mod train_support;

use albef_dataset::hash_file;
use albef_registry::RunStatus;
use albef_train::model::weights;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use train_support::{albef, history, ingested_corpus, interrupted_at, json_line};

const STEPS: i64 = 40;
const BATCH: &str = "8";

fn train_args(cmd: &mut Command) -> &mut Command {
    cmd.args([
        "train",
        "--config",
        "configs/albef-tiny.toml",
        "--dataset",
        "shapes",
    ])
    .args([
        "--steps",
        &STEPS.to_string(),
        "--batch-size",
        BATCH,
        "--format",
        "json",
    ])
    .args(["--experiment", "e2e", "--log-format", "json"])
}

#[test]
fn ingest_train_interrupt_resume_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (home, reg) = ingested_corpus(tmp.path(), &rt);

    // Uninterrupted, with held-out evaluation every 20 steps.
    let full = json_line(
        train_args(&mut albef(&home)).args([
            "--eval-dataset",
            "shapes-heldout",
            "--eval-every",
            "20",
        ]),
        "uninterrupted training",
    );
    let full_run = full["run"].as_i64().unwrap();
    assert_eq!(full["status"], "FINISHED");
    assert_eq!(full["step"], STEPS);
    let full_loss = history(&reg, &rt, full_run, "loss");
    assert_eq!(full_loss.len() as i64, STEPS, "one loss per step");
    assert!(full_loss.iter().all(|(_, v)| v.is_finite()));
    for key in [
        "loss_itc",
        "loss_itm",
        "loss_mlm",
        "lr",
        "temp",
        "alpha",
        "images_per_s",
        "data_wait_pct",
    ] {
        assert_eq!(
            history(&reg, &rt, full_run, key).len() as i64,
            STEPS,
            "{key} logged every step"
        );
    }
    let alpha = history(&reg, &rt, full_run, "alpha");
    assert_eq!(alpha[0].1, 0.0, "alpha starts its ramp at 0");
    let r1 = history(&reg, &rt, full_run, "r1_t2i");
    assert_eq!(
        r1.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![20, 40],
        "evaluated at steps 20 and 40"
    );
    let detail = rt.block_on(reg.run_detail(full_run)).unwrap();
    let detail = serde_json::to_value(&detail).unwrap();
    assert!(
        detail.to_string().contains("model.vision.width"),
        "the config is logged as params"
    );

    // Interrupted by SIGINT once a few steps are done: a checkpoint, status KILLED.
    let stopped = interrupted_at(train_args(&mut albef(&home)), 4);
    let stop_step = stopped["step"].as_i64().unwrap();
    assert!(
        (4..STEPS).contains(&stop_step),
        "stopped at step {stop_step}"
    );
    let stopped_run = stopped["run"].as_i64().unwrap();
    assert_eq!(
        rt.block_on(reg.run(stopped_run)).unwrap().status,
        RunStatus::Killed
    );

    // Resumed from that checkpoint: the remaining losses equal the uninterrupted run's.
    let resumed = json_line(
        albef(&home).args([
            "train",
            "--resume",
            &stopped_run.to_string(),
            "--format",
            "json",
        ]),
        "resumed training",
    );
    assert_eq!(resumed["status"], "FINISHED");
    assert_eq!(resumed["step"], STEPS);
    let resumed_run = resumed["run"].as_i64().unwrap();
    for key in [
        "loss", "loss_itc", "loss_itm", "loss_mlm", "lr", "temp", "alpha",
    ] {
        let want: Vec<(i64, f64)> = history(&reg, &rt, full_run, key)
            .into_iter()
            .filter(|(s, _)| *s > stop_step)
            .collect();
        let got = history(&reg, &rt, resumed_run, key);
        assert_eq!(
            got.len() as i64,
            STEPS - stop_step,
            "{key}: one point per resumed step"
        );
        assert_eq!(
            got, want,
            "{key} after resuming at step {stop_step} differs from the uninterrupted run"
        );
    }

    // Every checkpoint is registered with its file's sha256.
    for ckpt in rt.block_on(reg.checkpoints(None)).unwrap() {
        let (sha, _) = hash_file(Path::new(&ckpt.uri)).unwrap();
        assert_eq!(sha, ckpt.sha256, "checkpoint {} ({})", ckpt.id, ckpt.uri);
        assert!(PathBuf::from(&ckpt.uri)
            .with_file_name("manifest.json")
            .exists());
    }

    // Evaluation of the final checkpoint: six recall figures, in percent.
    let ckpt = resumed["checkpoint"].as_i64().unwrap().to_string();
    let recall = json_line(
        albef(&home).args([
            "eval",
            "--checkpoint",
            &ckpt,
            "--dataset",
            "shapes-heldout",
            "--format",
            "json",
        ]),
        "eval",
    );
    for key in ["r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i"] {
        let v = recall[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {recall}"));
        assert!((0.0..=100.0).contains(&v), "{key} = {v}");
    }
    assert!(recall["r1_t2i"].as_f64() <= recall["r5_t2i"].as_f64());
    assert!(recall["r5_t2i"].as_f64() <= recall["r10_t2i"].as_f64());
}

#[test]
fn a_new_run_starts_its_text_encoder_from_bert_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (home, _reg) = ingested_corpus(tmp.path(), &rt);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let minilm = root.join("assets/model.safetensors");
    // albef-tiny with MiniLM-L6-H384's text shapes (its first 4 layers), starting from it.
    let tiny = std::fs::read_to_string(root.join("configs/albef-tiny.toml")).unwrap();
    let with_init = |minilm_shapes: bool| {
        let mut text = false;
        let mut out = String::new();
        for line in tiny.lines() {
            text = match line {
                l if l.starts_with("[model.text]") => true,
                l if l.starts_with('[') => false,
                _ => text,
            };
            let line = match line.split_whitespace().next() {
                Some("hidden_size") if text && minilm_shapes => "hidden_size = 384".to_string(),
                Some("heads") if text && minilm_shapes => "heads = 12".to_string(),
                Some("intermediate_size") if text && minilm_shapes => {
                    "intermediate_size = 1536".to_string()
                }
                Some("mask_token_id") => {
                    format!("{line}\ninit = {:?}", minilm.display().to_string())
                }
                _ => line.to_string(),
            };
            out.push_str(&line);
            out.push('\n');
        }
        out
    };
    let config = tmp.path().join("tiny-minilm.toml");
    std::fs::write(&config, with_init(true)).unwrap();
    let run = |config: &Path| {
        albef(&home)
            .args(["train", "--config"])
            .arg(config)
            .args(["--dataset", "shapes", "--steps", "2", "--batch-size", BATCH])
            .args(["--experiment", "init", "--format", "json"])
            .output()
            .unwrap()
    };
    let out = run(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let done: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // After two small steps the word embeddings are still MiniLM's (random ones would differ
    // by about 0.05 on average).
    let read = |path: &Path, key: &str| {
        weights::read(path)
            .unwrap()
            .remove(key)
            .unwrap_or_else(|| panic!("{} has no {key}", path.display()))
    };
    let trained = read(
        Path::new(done["checkpoint_path"].as_str().unwrap()),
        "text_encoder.bert.embeddings.word_embeddings.weight",
    );
    let start = read(&minilm, "embeddings.word_embeddings.weight");
    let diff = (&trained - &start)
        .abs()
        .mean(tch::Kind::Float)
        .double_value(&[]);
    assert!(diff < 0.005, "mean difference from MiniLM {diff}");

    // Shapes that do not fit (albef-tiny's hidden 192) are refused, naming the setting.
    std::fs::write(&config, with_init(false)).unwrap();
    let bad = run(&config);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("model.text.init"), "{err}");
}
