//! The data loader on real Parquet shards (written in the dataset format from the synthetic
//! corpus or row by row), the real BERT tokenizer and real tch tensors: determinism for a seed
//! whatever the thread count, shuffling across shards, rank sharding, padding and truncation,
//! normalisation, same-image masking, corrupt rows and empty datasets.
use albef_corpus::render::{encode_jpeg, Rgb};
use albef_corpus::{corpus_to_shards, generate, success_row, GenerateOptions, Split};
use albef_dataset::{Row, Status};
use albef_train::data::augment::{CLIP_MEAN, CLIP_STD};
use albef_train::data::{Batch, Loader, LoaderConfig, Mode};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tch::Tensor;

fn tokenizer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/tokenizer.json")
}

fn config(batch_size: usize) -> LoaderConfig {
    LoaderConfig {
        tokenizer: tokenizer(),
        image_res: 48,
        batch_size,
        shuffle_window: 4,
        seed: 17,
        ..Default::default()
    }
}

/// 120 synthetic pairs in 5 shards of 24 rows: keys are `SSSSSRRRRR` (shard, row).
fn corpus_shards() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let opts = GenerateOptions {
        n: 120,
        seed: 1,
        image_size: 64,
        ..Default::default()
    };
    generate(&dir.path().join("corpus"), &opts).unwrap();
    corpus_to_shards(
        &dir.path().join("corpus"),
        Split::Train,
        &dir.path().join("v1"),
        24,
    )
    .unwrap();
    dir
}

fn all(loader: &Loader, epoch: u64) -> Vec<Batch> {
    loader.epoch(epoch, 0).map(|b| b.unwrap()).collect()
}

fn keys(batches: &[Batch]) -> Vec<String> {
    batches.iter().flat_map(|b| b.keys.clone()).collect()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.equal(b)
}

fn solid_jpeg(colour: [u8; 3], size: usize) -> Vec<u8> {
    let pixels = (0..size * size).flat_map(|_| colour).collect();
    encode_jpeg(
        &Rgb {
            width: size,
            height: size,
            pixels,
        },
        95,
    )
    .unwrap()
}

/// Writes `rows` as shard 0 of the version in `dir`.
fn write_shard(dir: &Path, rows: Vec<Row>) -> anyhow::Result<()> {
    albef_corpus::write_shard(dir, 0, &[], rows)
}

fn row(key: &str, caption: &str, jpg: Vec<u8>) -> Row {
    success_row(
        key.into(),
        format!("http://example.test/{key}.jpg"),
        caption,
        jpg,
    )
    .unwrap()
}

#[test]
fn batches_are_the_same_for_a_seed_whatever_the_thread_count() {
    let dir = corpus_shards();
    let v1 = dir.path().join("v1");
    let one = Loader::open(
        &v1,
        LoaderConfig {
            workers: 1,
            ..config(8)
        },
    )
    .unwrap();
    let three = Loader::open(
        &v1,
        LoaderConfig {
            workers: 3,
            prefetch: 2,
            ..config(8)
        },
    )
    .unwrap();
    let (a, b) = (all(&one, 0), all(&three, 0));
    assert_eq!(a.len(), 15);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.keys, y.keys);
        assert!(same(&x.image, &y.image), "batch {} pixels differ", x.index);
        assert!(same(&x.input_ids, &y.input_ids));
    }
    // Another epoch: another order and other crops.
    let c = all(&one, 1);
    assert_ne!(keys(&a), keys(&c));
    let other_seed = Loader::open(
        &v1,
        LoaderConfig {
            seed: 18,
            ..config(8)
        },
    )
    .unwrap();
    assert_ne!(keys(&a), keys(&all(&other_seed, 0)));
}

#[test]
fn an_epoch_mixes_shards_and_resumes_mid_epoch() {
    let dir = corpus_shards();
    let loader = Loader::open(&dir.path().join("v1"), config(8)).unwrap();
    let batches = all(&loader, 0);
    let order = keys(&batches);
    // Every row once (120 = 15 batches of 8).
    assert_eq!(order.iter().collect::<HashSet<_>>().len(), 120);
    // Batches draw from several shards of a shuffle window.
    let shards_in = |b: &Batch| b.keys.iter().map(|k| &k[..5]).collect::<HashSet<_>>().len();
    let mixed = batches.iter().filter(|b| shards_in(b) >= 2).count();
    assert!(mixed >= 12, "only {mixed} of 15 batches mix shards");
    let mut sorted = order.clone();
    sorted.sort();
    assert_ne!(order, sorted);
    // Resuming at batch 6 gives batches 6.. exactly.
    let resumed: Vec<Batch> = loader.epoch(0, 6).map(|b| b.unwrap()).collect();
    assert_eq!(resumed.len(), 9);
    for (x, y) in resumed.iter().zip(&batches[6..]) {
        assert_eq!((x.index, &x.keys), (y.index, &y.keys));
        assert!(same(&x.image, &y.image));
    }
}

#[test]
fn ranks_get_disjoint_shares_that_cover_the_epoch() {
    let dir = corpus_shards();
    let v1 = dir.path().join("v1");
    let mut seen = Vec::new();
    for rank in 0..3 {
        let loader = Loader::open(
            &v1,
            LoaderConfig {
                rank,
                world_size: 3,
                ..config(5)
            },
        )
        .unwrap();
        assert_eq!((loader.len(), loader.batches_per_epoch()), (40, 8));
        let k = keys(&all(&loader, 2));
        assert_eq!(k.len(), 40);
        seen.push(k.into_iter().collect::<HashSet<_>>());
    }
    for i in 0..3 {
        for j in i + 1..3 {
            assert!(seen[i].is_disjoint(&seen[j]), "ranks {i} and {j} overlap");
        }
    }
    let union: HashSet<_> = seen.iter().flatten().collect();
    assert_eq!(union.len(), 120);
    let e = Loader::open(
        &v1,
        LoaderConfig {
            rank: 3,
            world_size: 3,
            ..config(5)
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("rank 3"), "{e}");
}

#[test]
fn augmented_images_have_the_shape_and_range_of_normalised_pixels() {
    let dir = corpus_shards();
    let loader = Loader::open(&dir.path().join("v1"), config(8)).unwrap();
    let batch = loader.epoch(0, 0).next().unwrap().unwrap();
    assert_eq!(batch.image.size(), [8, 3, 48, 48]);
    assert_eq!(batch.image.kind(), tch::Kind::Float);
    for c in 0..3 {
        let channel = batch.image.select(1, c);
        let (lo, hi) = (
            -CLIP_MEAN[c as usize] / CLIP_STD[c as usize],
            (1.0 - CLIP_MEAN[c as usize]) / CLIP_STD[c as usize],
        );
        assert!(channel.min().double_value(&[]) >= lo as f64 - 1e-5);
        assert!(channel.max().double_value(&[]) <= hi as f64 + 1e-5);
    }
    // Evaluation is deterministic resizing: the same every epoch, no augmentation.
    let eval = Loader::open(
        &dir.path().join("v1"),
        LoaderConfig {
            mode: Mode::Eval,
            ..config(8)
        },
    )
    .unwrap();
    let (a, b) = (all(&eval, 0), all(&eval, 5));
    assert!(same(&a[0].image, &b[0].image));
    assert_eq!(a[0].keys[0], "0000000000", "evaluation keeps file order");
    let train_a = loader.epoch(3, 0).next().unwrap().unwrap();
    let train_b = loader.epoch(4, 0).next().unwrap().unwrap();
    assert!(!same(&train_a.image, &train_b.image));
}

#[test]
fn normalisation_uses_clip_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let colours = [[0u8, 0, 0], [255, 255, 255], [200, 100, 50]];
    let rows: Vec<Row> = colours
        .iter()
        .enumerate()
        .map(|(i, &c)| row(&format!("{i:03}"), "a plain picture", solid_jpeg(c, 40)))
        .collect();
    write_shard(dir.path(), rows).unwrap();
    let loader = Loader::open(
        dir.path(),
        LoaderConfig {
            mode: Mode::Eval,
            ..config(3)
        },
    )
    .unwrap();
    let batch = loader.epoch(0, 0).next().unwrap().unwrap();
    for (i, colour) in colours.iter().enumerate() {
        for c in 0..3 {
            let plane = batch.image.get(i as i64).get(c as i64);
            let expected = (colour[c] as f64 / 255.0 - CLIP_MEAN[c] as f64) / CLIP_STD[c] as f64;
            let mean = plane.mean(tch::Kind::Double).double_value(&[]);
            let std = plane.std(false).double_value(&[]);
            // JPEG may move a plain colour by a level or two.
            assert!(
                (mean - expected).abs() < 3.0 / 255.0 / CLIP_STD[c] as f64,
                "image {i} channel {c}: {mean} vs {expected}"
            );
            assert!(std < 0.02, "image {i} channel {c} is not plain: std {std}");
        }
    }
}

#[test]
fn captions_are_cleaned_truncated_and_padded_to_the_longest() {
    let dir = tempfile::tempdir().unwrap();
    let jpg = || solid_jpeg([10, 200, 30], 32);
    let long = "A very, very long caption: it keeps going and going well past the limit!";
    let rows = vec![
        row("a", "Red circle.", jpg()),
        row("b", long, jpg()),
        row("c", "Blue-green square", jpg()),
    ];
    write_shard(dir.path(), rows).unwrap();
    let eval = |max_tokens| LoaderConfig {
        mode: Mode::Eval,
        max_tokens,
        ..config(3)
    };
    let short = Loader::open(dir.path(), eval(8)).unwrap();
    let batch = short.epoch(0, 0).next().unwrap().unwrap();
    assert_eq!(batch.input_ids.size(), [3, 8]);
    let ids: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(&batch.input_ids).unwrap();
    let mask: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(&batch.attention_mask).unwrap();
    // [CLS] red circle [SEP] [PAD]...: the period is gone, lower-cased.
    assert_eq!(&ids[0][..4], &[101, 2417, 4418, 102]);
    assert_eq!(&ids[0][4..], &[0, 0, 0, 0]);
    assert_eq!(mask[0], vec![1, 1, 1, 1, 0, 0, 0, 0]);
    // The long caption is cut to 8 tokens and still ends with [SEP].
    assert_eq!(ids[1][0], 101);
    assert_eq!(ids[1][7], 102);
    assert_eq!(mask[1], vec![1; 8]);
    // "blue-green" became "blue green".
    assert_eq!(&ids[2][..5], &[101, 2630, 2665, 2675, 102]);
    // With room, the batch is as long as its longest caption, not the maximum.
    let roomy = Loader::open(dir.path(), eval(64)).unwrap();
    let batch = roomy.epoch(0, 0).next().unwrap().unwrap();
    let len = batch.input_ids.size()[1];
    assert!(len > 8 && len < 64, "padded to {len}");
    let lengths = batch
        .attention_mask
        .sum_dim_intlist(&[1i64][..], false, tch::Kind::Int64);
    assert_eq!(lengths.max().int64_value(&[]), len);
}

#[test]
fn captions_of_one_picture_are_masked_as_negatives() {
    let dir = tempfile::tempdir().unwrap();
    let (red, blue) = (solid_jpeg([220, 20, 20], 32), solid_jpeg([20, 20, 220], 32));
    let rows = vec![
        row("r1", "a red picture", red.clone()),
        row("b1", "a blue picture", blue.clone()),
        row("r2", "all red", red.clone()),
        row("b2", "all blue", blue),
        row("r3", "red again", red),
    ];
    write_shard(dir.path(), rows).unwrap();
    let loader = Loader::open(
        dir.path(),
        LoaderConfig {
            mode: Mode::Eval,
            ..config(5)
        },
    )
    .unwrap();
    let batch = loader.epoch(0, 0).next().unwrap().unwrap();
    let mask: Vec<Vec<bool>> = Vec::<Vec<bool>>::try_from(&batch.same_image()).unwrap();
    let red = |k: &str| k.starts_with('r');
    for (i, ki) in batch.keys.iter().enumerate() {
        for (j, kj) in batch.keys.iter().enumerate() {
            assert_eq!(mask[i][j], red(ki) == red(kj), "{ki} vs {kj}");
        }
    }
}

#[test]
fn corrupt_jpegs_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<Row> = (0..10)
        .map(|i| {
            row(
                &format!("good{i}"),
                "a green picture",
                solid_jpeg([20, 200, 20], 32),
            )
        })
        .collect();
    for (i, bytes) in [
        b"not a jpeg at all".to_vec(),
        vec![0xff, 0xd8, 0xff, 0xe0, 0, 16],
    ]
    .into_iter()
    .enumerate()
    {
        let mut bad = row(&format!("bad{i}"), "broken", solid_jpeg([0, 0, 0], 8));
        bad.jpg = Some(bytes);
        rows.insert(3 + 4 * i, bad);
    }
    write_shard(dir.path(), rows).unwrap();
    let loader = Loader::open(dir.path(), config(4)).unwrap();
    let batches = all(&loader, 0);
    assert_eq!(batches.len(), 3);
    assert!(batches
        .iter()
        .all(|b| b.len() == 4 && b.image.size()[0] == 4));
    assert!(keys(&batches).iter().all(|k| k.starts_with("good")));
    assert_eq!(loader.corrupt_rows(), 2);
}

#[test]
fn an_empty_dataset_is_an_error_that_names_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let e = Loader::open(dir.path(), config(4)).err().unwrap();
    let text = format!("{e:#}");
    assert!(
        text.contains("no Parquet shards") && text.contains(&dir.path().display().to_string()),
        "{text}"
    );

    let failed = Row {
        key: "0".into(),
        url: "http://example.test/0.jpg".into(),
        caption: Some("x".into()),
        text: "x".into(),
        status: Some(Status::FailedToDownload),
        error_message: Some("HTTP 404".into()),
        http_status: Some(404),
        ..Default::default()
    };
    write_shard(dir.path(), vec![failed]).unwrap();
    let e = Loader::open(dir.path(), config(4)).err().unwrap();
    let text = format!("{e:#}");
    assert!(
        text.contains("no rows with status 'success'")
            && text.contains(&dir.path().display().to_string()),
        "{text}"
    );
}

#[test]
fn the_wait_for_data_is_measured() {
    let dir = corpus_shards();
    let loader = Loader::open(&dir.path().join("v1"), config(8)).unwrap();
    let mut epoch = loader.epoch(0, 0);
    assert!(epoch.data_wait().is_zero());
    epoch.next().unwrap().unwrap();
    assert!(
        !epoch.data_wait().is_zero(),
        "the first batch cannot be ready before it is asked for"
    );
    assert_eq!(epoch.remaining(), 14);
    // Dropping an epoch part-way stops its threads (the test would hang otherwise).
    drop(epoch);
}
