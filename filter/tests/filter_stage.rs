//! The filter stage end to end on real files: a synthetic noisy corpus written as Parquet
//! shards, an albef-tiny checkpoint trained for a few steps with real libtorch (so that its
//! queues hold real momentum features and its scores spread), a real SQLite registry. Checks
//! that scores do not depend on shard order or batch size, the keep-fraction and threshold
//! semantics, that every input row is in the output, and the recorded lineage.
use albef_corpus::corpus_to_shards;
use albef_corpus::generate::{generate, GenerateOptions, Split};
use albef_dataset as dataset;
use albef_filter::{
    run, score_dataset, FilterJob, ScoreName, Scorer, Selection, INVARIANCE_TOLERANCE,
    SCORE_COLUMNS,
};
use albef_registry::{DatasetStatus, NewDatasetVersion, NewShard, Registry};
use albef_train::checkpoint::{self, DataPosition, TrainerState};
use albef_train::config::Config;
use albef_train::data::{self, Loader, LossWeight};
use albef_train::model::{self, Albef, Precision};
use albef_train::trainer::fit::loader_config;
use albef_train::trainer::{AdamW, AdamWOptions, AlphaRamp, LrSchedule};
use arrow_array::{Array, Float32Array};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

const ROWS: usize = 48;
const ROWS_PER_SHARD: usize = 16;

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets")
}

fn tiny_config() -> Config {
    let mut cfg =
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/albef-tiny.toml"))
            .unwrap();
    cfg.model.queue_size = 32;
    cfg.train.batch_size = 16;
    cfg
}

/// Trains albef-tiny for a few steps on `data` and saves a checkpoint under `dir`.
fn train_checkpoint(data: &Path, dir: &Path) -> PathBuf {
    let cfg = tiny_config();
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Albef::new(&vs, &cfg.model, Precision::default()).unwrap();
    let mut opt = AdamW::new(
        &vs,
        AdamWOptions {
            betas: cfg.train.betas,
            eps: 1e-8,
            weight_decay: cfg.train.weight_decay,
        },
    )
    .unwrap();
    let lcfg = loader_config(&cfg, &assets().join("tokenizer.json"), 2, data::Mode::Train);
    let loader = Loader::open(data, lcfg).unwrap();
    let mut steps = 0;
    for epoch in 0..2 {
        for batch in loader.epoch(epoch, 0) {
            let batch = batch.unwrap();
            let b = model::Batch {
                image: batch.image,
                input_ids: batch.input_ids,
                attention_mask: batch.attention_mask,
            };
            opt.zero_grad();
            let losses = model.losses(&b, 0.4, true).unwrap();
            losses.total().backward();
            opt.step(3e-4);
            steps += 1;
        }
    }
    let state = TrainerState {
        run: 1,
        dataset_version: 1,
        step: steps,
        total_steps: steps,
        steps_per_epoch: steps / 2,
        accumulate: 1,
        clip_grad: None,
        world_size: 1,
        seed: 7,
        data: DataPosition::default(),
        lr: LrSchedule::new(&cfg.train, steps),
        alpha: AlphaRamp::new(&cfg.model, &cfg.train, steps / 2),
        config: cfg,
        metrics: BTreeMap::new(),
    };
    checkpoint::save(&checkpoint::step_dir(dir, steps), &vs, &opt, &state).unwrap()
}

/// Everything the tests share: the corpus as shards, the checkpoint, the registry.
struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    checkpoint: PathBuf,
    registry: Registry,
    checkpoint_id: i64,
}

async fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let corpus = root.join("corpus");
    generate(
        &corpus,
        &GenerateOptions {
            n: ROWS,
            seed: 3,
            noise: 0.3,
            image_size: 96,
            ..Default::default()
        },
    )
    .unwrap();
    let data = root.join("noisy");
    assert_eq!(
        corpus_to_shards(&corpus, Split::Train, &data, ROWS_PER_SHARD).unwrap(),
        ROWS
    );
    let checkpoint = train_checkpoint(&data, &root.join("ckpt"));

    let registry = Registry::connect(&format!("sqlite://{}", root.join("reg.db").display()))
        .await
        .unwrap();
    let version = registry
        .create_dataset_version(NewDatasetVersion {
            dataset: "synth".into(),
            uri: data.display().to_string(),
            parent: None,
            stage: "ingest".into(),
            params: json!({}),
        })
        .await
        .unwrap();
    for i in dataset::complete_shards(&data).unwrap() {
        registry
            .register_shard(
                version.id,
                NewShard {
                    index: i as i64,
                    uri: dataset::parquet_path(&data, i).display().to_string(),
                    rows: ROWS_PER_SHARD as i64,
                    stats: json!({}),
                },
            )
            .await
            .unwrap();
    }
    registry
        .finish_dataset_version(version.id, json!({}))
        .await
        .unwrap();
    let run = registry
        .create_run("filter-test", "pretrain", &json!({}))
        .await
        .unwrap();
    let checkpoint_id = registry
        .register_checkpoint(run, &checkpoint, 4, &[])
        .await
        .unwrap();
    World {
        _tmp: tmp,
        root,
        data,
        checkpoint,
        registry,
        checkpoint_id,
    }
}

fn job(w: &World, output: &str, selection: Selection) -> FilterJob {
    FilterJob {
        checkpoint: w.checkpoint_id.to_string(),
        dataset: "synth@1".into(),
        output: w.root.join(output).display().to_string(),
        mirror: w.root.join("mirror"),
        selection,
        score: ScoreName::Score,
        batch_size: 16,
        workers: 2,
        device: Device::Cpu,
        tokenizer: assets().join("tokenizer.json"),
        dry_run: false,
        progress: false,
        sheet_size: 4,
    }
}

/// Every row of a dataset folder: key -> (status, score).
fn read_output(dir: &Path) -> HashMap<String, (String, Option<f32>)> {
    let mut rows = HashMap::new();
    for i in dataset::complete_shards(dir).unwrap() {
        for batch in dataset::read_batches(&dataset::parquet_path(dir, i), None, None).unwrap() {
            let batch = batch.unwrap();
            for c in SCORE_COLUMNS {
                assert!(batch.column_by_name(c).is_some(), "column {c} missing");
            }
            let keys = dataset::string_col(&batch, dataset::KEY).unwrap();
            let status = dataset::string_col(&batch, dataset::STATUS).unwrap();
            let score = batch
                .column_by_name("score")
                .unwrap()
                .as_any()
                .downcast_ref::<Float32Array>()
                .unwrap();
            for r in 0..batch.num_rows() {
                let s = (!score.is_null(r)).then(|| score.value(r));
                rows.insert(keys.value(r).to_string(), (status.value(r).to_string(), s));
            }
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_stage_end_to_end() {
    let w = world().await;
    let tokenizer = assets().join("tokenizer.json");

    // Invariance: the same rows with the shards in reverse order, another batch size.
    let reordered = w.root.join("reordered");
    std::fs::create_dir_all(&reordered).unwrap();
    let shards = dataset::complete_shards(&w.data).unwrap();
    for (&from, &to) in shards.iter().zip(shards.iter().rev()) {
        std::fs::copy(
            dataset::parquet_path(&w.data, from),
            dataset::parquet_path(&reordered, to),
        )
        .unwrap();
    }
    let scorer = Scorer::load(&w.checkpoint, Device::Cpu).unwrap();
    let a = score_dataset(&scorer, &w.data, 16, 2, &tokenizer, false).unwrap();
    let b = score_dataset(&scorer, &reordered, 5, 1, &tokenizer, false).unwrap();
    assert_eq!(a.scores.len(), ROWS);
    assert_eq!(b.scores.len(), ROWS);
    let mut worst = 0f32;
    for (key, sa) in &a.scores {
        let sb = b.scores[key];
        for (x, y) in sa.columns().into_iter().zip(sb.columns()) {
            worst = worst.max((x - y).abs());
        }
    }
    println!("largest score difference across shard order and batch size: {worst:e}");
    assert!(worst <= INVARIANCE_TOLERANCE, "scores moved by {worst}");
    // The scores must discriminate, or the comparison above would prove nothing.
    for name in ScoreName::ALL {
        let col: Vec<f32> = a.column(name).into_iter().map(|(_, s)| s).collect();
        let spread = col.iter().cloned().fold(f32::MIN, f32::max)
            - col.iter().cloned().fold(f32::MAX, f32::min);
        println!("{}: spread {spread}", name.column());
        assert!(
            spread > 100.0 * INVARIANCE_TOLERANCE,
            "{} barely varies",
            name.column()
        );
        assert!(col.iter().all(|s| (0.0..=1.0).contains(s)));
    }

    // Keep-fraction: ceil(0.3 * 48) = 15 kept, the highest-scored; every row present.
    let summary = run(&w.registry, &job(&w, "top30", Selection::KeepFraction(0.3)))
        .await
        .unwrap();
    assert_eq!(summary.kept, 15);
    assert_eq!(summary.scored, ROWS as u64);
    let out = read_output(&w.root.join("top30"));
    let input = read_output_keys(&w.data);
    assert_eq!(out.len(), ROWS);
    assert!(
        input.iter().all(|k| out.contains_key(k)),
        "an input row is missing"
    );
    let kept: Vec<f32> = out
        .values()
        .filter(|(s, _)| s == "success")
        .map(|(_, sc)| sc.unwrap())
        .collect();
    let dropped: Vec<f32> = out
        .values()
        .filter(|(s, _)| s == "filtered_out")
        .map(|(_, sc)| sc.unwrap())
        .collect();
    assert_eq!((kept.len(), dropped.len()), (15, ROWS - 15));
    let min_kept = kept.iter().cloned().fold(f32::MAX, f32::min);
    assert!(dropped.iter().all(|&d| d <= min_kept));
    for (key, (_, s)) in &out {
        assert!((s.unwrap() - a.scores[key].score).abs() <= INVARIANCE_TOLERANCE);
    }
    for f in [
        "contact_sheet.html",
        "contact_sheet.png",
        "scores.svg",
        "filter.json",
    ] {
        assert!(w.root.join("top30").join(f).is_file(), "{f} missing");
    }
    let png = image::open(w.root.join("top30/contact_sheet.png")).unwrap();
    assert_eq!((png.width(), png.height()), (4 * 128, 2 * 128));

    // Score-weighted training on the filtered version: every scored row (kept and
    // filtered_out), each batch weighted by its pairs' scores; plain training sees the kept.
    let top30 = w.root.join("top30");
    let mut cfg = tiny_config();
    cfg.train.score_weights = true;
    let weighted = Loader::open(
        &top30,
        loader_config(&cfg, &tokenizer, 2, data::Mode::Train),
    )
    .unwrap();
    let plain = Loader::open(
        &top30,
        loader_config(&tiny_config(), &tokenizer, 2, data::Mode::Train),
    )
    .unwrap();
    assert_eq!((weighted.len(), plain.len()), (ROWS, 15));
    let lw = weighted.loss_weight().unwrap();
    let all = LossWeight::fit(
        &kept.iter().chain(&dropped).copied().collect::<Vec<_>>(),
        0.1,
    );
    assert_eq!(lw, all.unwrap());
    assert!(plain.loss_weight().is_none());
    let (mut lowest, mut highest) = (f32::MAX, f32::MIN);
    for batch in weighted.epoch(0, 0) {
        let batch = batch.unwrap();
        let got = Vec::<f32>::try_from(batch.weight.as_ref().unwrap()).unwrap();
        for (key, g) in batch.keys.iter().zip(got) {
            assert_eq!(g, lw.weight(out[key].1), "weight of {key}");
            (lowest, highest) = (lowest.min(g), highest.max(g));
        }
    }
    assert!(
        lowest == 0.1 && (highest - 1.0).abs() < 1e-6,
        "{lowest} {highest}"
    );
    assert!(plain.epoch(0, 0).all(|b| b.unwrap().weight.is_none()));
    // The source version has no scores: refused with the shard named.
    let err = Loader::open(
        &w.data,
        loader_config(&cfg, &tokenizer, 2, data::Mode::Train),
    )
    .err()
    .unwrap();
    let err = format!("{err:#}");
    assert!(err.contains("has no `score` column"), "{err}");

    // Lineage in the registry.
    let v = w.registry.dataset_version("synth@2").await.unwrap();
    assert_eq!(v.stage, "filter");
    assert_eq!(v.status, DatasetStatus::Finished);
    assert_eq!(v.parent_id, Some(summary.source_version_id));
    assert_eq!(v.params["checkpoint_id"], json!(w.checkpoint_id));
    let ckpt = w.registry.checkpoint(w.checkpoint_id).await.unwrap();
    assert_eq!(v.params["checkpoint_sha256"], json!(ckpt.sha256));
    assert_eq!(v.params["keep_fraction"], json!(0.3));
    assert_eq!(v.params["score"], json!("score"));
    let stats = v.stats.unwrap();
    assert_eq!(stats["kept"], json!(15));
    // Rows by status, as the dashboard's dataset page shows them.
    assert_eq!(
        stats["by_status"],
        json!({"success": 15, "filtered_out": ROWS - 15})
    );
    assert!((stats["kept_fraction"].as_f64().unwrap() - 15.0 / 48.0).abs() < 1e-12);
    assert_eq!(stats["histograms"].as_array().unwrap().len(), 4);
    let sheet = stats["contact_sheet"].as_str().unwrap();
    assert!(sheet.ends_with("top30/contact_sheet.html"), "{sheet}");
    assert!(Path::new(sheet).is_file(), "{sheet}");
    assert_eq!(v.rows, ROWS as i64);

    // Threshold on the ITM probability, as a dry run: nothing written or registered.
    let mut itm = a
        .column(ScoreName::Itm)
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>();
    itm.sort_by(f32::total_cmp);
    let t = f64::from(itm[ROWS / 2]);
    let mut dry = job(&w, "dry", Selection::Threshold(t));
    dry.score = ScoreName::Itm;
    dry.dry_run = true;
    let s = run(&w.registry, &dry).await.unwrap();
    let expected = itm.iter().filter(|&&x| f64::from(x) >= t).count() as u64;
    assert_eq!(s.kept, expected);
    assert!(s.version.is_none());
    assert!(!w.root.join("dry").exists());
    assert!(w.registry.dataset_version("synth@3").await.is_err());
}

fn read_output_keys(dir: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    for i in dataset::complete_shards(dir).unwrap() {
        for batch in dataset::read_batches(
            &dataset::parquet_path(dir, i),
            None,
            Some(&[dataset::KEY][..]),
        )
        .unwrap()
        {
            let batch = batch.unwrap();
            let k = dataset::string_col(&batch, dataset::KEY).unwrap();
            keys.extend((0..k.len()).map(|r| k.value(r).to_string()));
        }
    }
    keys
}
