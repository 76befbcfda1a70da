//! Images per second of the data loader alone (read, decode, augment, normalise, tokenise, batch)
//! for `scripts/bench-loader`, which runs PyTorch's DataLoader beside it on the same shards.
//! Usage: bench_loader SHARDS TOKENIZER_JSON [EPOCHS] [WORKERS] [RES] [BATCH]
//! SHARDS may be an object-store URI (`scripts/bench-storage`): the version is then pulled into
//! the mirror `ALBEF_BENCH_MIRROR` first, and the time that took is counted and reported.
use albef_dataset::store;
use albef_train::data::{Loader, LoaderConfig};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| -> Result<usize> {
        args.get(i).map_or(Ok(default), |a| {
            a.parse().with_context(|| format!("argument {i}: {a:?}"))
        })
    };
    let shards = args
        .get(1)
        .context("usage: bench_loader SHARDS TOKENIZER [EPOCHS] [WORKERS] [RES] [BATCH]")?;
    let tokenizer = PathBuf::from(args.get(2).context("missing TOKENIZER_JSON")?);
    let (epochs, workers, res, batch) = (arg(3, 1)?, arg(4, 2)?, arg(5, 256)?, arg(6, 64)?);
    let started = Instant::now();
    let mirror =
        std::env::var_os("ALBEF_BENCH_MIRROR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = store::local_folder(shards, &mirror)?;
    let pull_s = started.elapsed().as_secs_f64();
    let loader = Loader::open(
        &dir,
        LoaderConfig {
            tokenizer,
            image_res: res,
            batch_size: batch,
            workers,
            ..Default::default()
        },
    )?;
    let (mut images, mut waited) = (0, 0.0);
    for epoch in 0..epochs as u64 {
        let mut batches = loader.epoch(epoch, 0);
        for b in batches.by_ref() {
            images += b?.len();
        }
        waited += batches.data_wait().as_secs_f64();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "loader": "albef (Rust)", "images": images, "seconds": seconds,
            "images_per_s": images as f64 / seconds, "workers": workers, "res": res,
            "batch": batch, "data_wait_s": waited, "corrupt_rows": loader.corrupt_rows(),
            "pull_s": pull_s,
        })
    );
    Ok(())
}
