//! Parquet lists (LAION): read by polars in slices of at most `BATCH_ROWS` rows of one row
//! group, only the columns used.
use super::frame::{Frame, Frames, Layout};
use super::{Batching, InputSpec};
use anyhow::{Context, Result};
use polars::prelude::{ParallelStrategy, ParquetReader, SerReader};
use std::fs::File;
use std::path::Path;

/// A Parquet list, read by polars in slices of at most `batching.rows` rows of one row group.
pub(super) fn parquet_frames(file: &Path, spec: &InputSpec, batching: Batching) -> Result<Frames> {
    let open = || File::open(file).with_context(|| format!("cannot open {}", file.display()));
    let mut reader = ParquetReader::new(open()?);
    let schema = reader
        .schema()
        .with_context(|| format!("{} is not a Parquet file", file.display()))?;
    let names: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
    let layout = Layout::find(&names, spec, file)?;
    let metadata = reader
        .get_metadata()
        .with_context(|| format!("{} is not a Parquet file", file.display()))?
        .clone();
    let mut slices = Vec::new();
    let mut offset = 0;
    for rg in &metadata.row_groups {
        let n = rg.num_rows();
        let mut start = 0;
        while start < n {
            let len = batching.rows.min(n - start);
            slices.push((offset + start, len));
            start += len;
        }
        offset += n;
    }
    let projection = layout.used();
    let file = file.to_path_buf();
    let mut slices = slices.into_iter();
    let mut failed = false;
    Ok(Box::new(std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let slice = slices.next()?;
        let frame = File::open(&file)
            .with_context(|| format!("cannot open {}", file.display()))
            .and_then(|f| {
                let mut reader = ParquetReader::new(f)
                    .with_projection(Some(projection.clone()))
                    .with_slice(Some(slice))
                    .read_parallel(ParallelStrategy::Columns);
                reader.set_metadata(metadata.clone());
                reader.finish().with_context(|| {
                    format!(
                        "cannot read rows {}-{} of {}",
                        slice.0 + 1,
                        slice.0 + slice.1,
                        file.display()
                    )
                })
            })
            .and_then(|df| Frame::new(&df, &layout, |i| Ok(df.column(&names[i])?.clone())));
        failed = frame.is_err();
        Some(frame)
    })))
}

/// The number of rows of a Parquet list, from its metadata.
pub(super) fn count(file: &Path) -> Result<u64> {
    let f = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    Ok(ParquetReader::new(f)
        .num_rows()
        .with_context(|| format!("{} is not a Parquet file", file.display()))? as u64)
}
