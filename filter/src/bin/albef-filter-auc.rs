//! `albef-filter-auc DIR [LABEL]`: prints, as one JSON object, the ROC-AUC of every score
//! column of an `albef filter` output folder for a 0/1 ground-truth column kept from the input
//! list (default `clean`, which the synthetic corpus's URL list carries). Used by
//! `scripts/bench-filter`; the computation is `albef_filter::report::label_auc`.
use anyhow::{bail, Result};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, label) = match args.as_slice() {
        [dir] => (PathBuf::from(dir), "clean"),
        [dir, label] => (PathBuf::from(dir), label.as_str()),
        _ => bail!("usage: albef-filter-auc DIR [LABEL]  (DIR: an albef filter output folder; LABEL: a 0/1 column, default clean)"),
    };
    let auc = albef_filter::report::label_auc(&dir, label)?;
    println!("{}", serde_json::to_string(&auc)?);
    Ok(())
}
