//! Two workers (`--worker-index 0/1 --num-workers 2`) ingest one URL list at the same time. The
//! second worker's shards hold an exact copy and two near copies (resized, mirrored) of pictures
//! in the first worker's shards; neither worker has seen the other's rows while fetching. When
//! the version is finished, the copies are marked as duplicates of the first copies, the shard
//! stats and the version stats count them, and the pass's journal lets a pass killed between a
//! stats file and its Parquet file finish without counting twice.
mod common;

use albef_dataset::stats::ShardStats;
use albef_dataset::{self as dataset, ShardWriter, Status};
use albef_ingest::catalog;
use albef_ingest::crossdup::dedupe_across_workers;
use albef_ingest::IngestConfig;
use albef_registry::{DatasetStatus, Registry};
use common::*;
use image::imageops::{self, FilterType};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const ROWS: usize = 16;
const SHARD_SIZE: u64 = 4;

fn config(list: &Path, out: &Path, worker_index: u64) -> IngestConfig {
    IngestConfig {
        worker_index,
        num_workers: 2,
        ..worker_config(list, out, SHARD_SIZE)
    }
}

fn stats(out: &Path, s: u64) -> ShardStats {
    serde_json::from_str(&std::fs::read_to_string(dataset::stats_path(out, s)).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_fetching_at_once_still_admit_one_copy_of_each_picture() {
    // Shard s belongs to worker s % 2: rows 0-3 and 8-11 to worker 0, 4-7 and 12-15 to worker 1.
    let a = photo(900, 320, 240);
    let b = photo(901, 320, 240);
    let mut bodies: Vec<Vec<u8>> = (0..ROWS)
        .map(|i| jpeg(&photo(1000 + i as u64, 320, 240), 90))
        .collect();
    bodies[1] = jpeg(&a, 90);
    bodies[5] = bodies[1].clone(); // the same bytes under another URL
    bodies[9] = jpeg(&b, 90);
    bodies[13] = jpeg(&imageops::resize(&b, 240, 180, FilterType::Triangle), 80);
    bodies[14] = jpeg(&imageops::flip_horizontal(&b), 90);
    let copies = [(5, 1, "sha256"), (13, 9, "phash"), (14, 9, "phash")];

    let routes = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            // 100 ms per picture: both workers are still fetching when the other starts.
            let reply = Reply::Delayed(100, Box::new(ok(body.clone(), "image/jpeg")));
            (format!("/img/{i}.jpg"), reply)
        })
        .collect();
    let server = serve(routes).await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.tsv");
    let mut text = String::from("url\tcaption\n");
    for i in 0..ROWS {
        text += &format!("{}\tpicture {i}\n", server.url(&format!("/img/{i}.jpg")));
    }
    std::fs::write(&list, text).unwrap();
    let out = dir.path().join("ds");
    let reg = Registry::connect(&format!("sqlite://{}", dir.path().join("reg.db").display()))
        .await
        .unwrap();
    let params = serde_json::json!({"workers": 2});
    // Worker 0 makes the version first (as `albef ingest` does under the dataset lock).
    catalog::join_version(&reg, "web", &config(&list, &out, 0), params.clone())
        .await
        .unwrap();
    let stop = || Arc::new(AtomicBool::new(false));
    let (w0, w1) = tokio::join!(
        catalog::ingest(&reg, "web", config(&list, &out, 0), params.clone(), stop()),
        catalog::ingest(&reg, "web", config(&list, &out, 1), params.clone(), stop()),
    );
    let (w0, w1) = (w0.unwrap(), w1.unwrap());
    assert!(
        w0.finished || w1.finished,
        "the worker that ends last finishes the version"
    );
    let mut rows = Vec::new();
    for s in dataset::complete_shards(&out).unwrap() {
        rows.extend(dataset::read_rows(&dataset::parquet_path(&out, s), None).unwrap());
    }
    assert_eq!(rows.len(), ROWS, "one output row per input row");
    let by_url: HashMap<String, &dataset::Row> = rows.iter().map(|r| (r.url.clone(), r)).collect();
    let row = |i: usize| by_url[&server.url(&format!("/img/{i}.jpg"))];
    for (copy, first, _) in copies {
        let (c, f) = (row(copy), row(first));
        assert_eq!(
            (c.status, f.status),
            (Some(Status::Duplicate), Some(Status::Success)),
            "row {copy}: {:?}",
            c.error_message
        );
        assert_eq!(c.dup_of.as_deref(), Some(f.key.as_str()));
        assert!(c.jpg.is_none(), "a duplicate keeps no image");
    }
    let success = rows
        .iter()
        .filter(|r| r.status == Some(Status::Success))
        .count();
    assert_eq!(success, ROWS - copies.len());

    // The shard stats count the copies and list them; the version's stats are their sum.
    // Worker 1 caught one of rows 13 and 14 as a copy of the other while fetching; the pass
    // found row 5 and the other of them, and pointed the first catch at row 9.
    let (s1, s3) = (stats(&out, 1), stats(&out, 3));
    assert_eq!(
        s1.late_duplicates.len(),
        1,
        "row 5 is found only by the pass"
    );
    assert_eq!(s1.stats.status(Status::Duplicate), 1);
    assert_eq!(s1.stats.dedupe.get("sha256"), Some(&1));
    assert_eq!(s3.late_duplicates.len(), 1);
    assert_eq!(s3.stats.status(Status::Duplicate), 2);
    assert_eq!(s3.stats.dedupe.get("phash"), Some(&2));
    assert_eq!(s3.stats.status(Status::Success), 2);
    assert_eq!(
        s3.parquet_bytes,
        std::fs::metadata(dataset::parquet_path(&out, 3))
            .unwrap()
            .len()
    );
    let version = reg.dataset_version("web@1").await.unwrap();
    assert_eq!(version.status, DatasetStatus::Finished);
    let total = version.stats.unwrap();
    assert_eq!(total["by_status"]["success"], (ROWS - copies.len()) as u64);
    assert_eq!(total["by_status"]["duplicate"], copies.len() as u64);

    let distance = config(&list, &out, 0).phash_distance;
    // Another pass finds nothing new and rewrites nothing.
    let again = dedupe_across_workers(&out, None, distance, &[0, 1, 2, 3]).unwrap();
    assert_eq!((again.marked, again.rewritten.len()), (0, 0));
    // Only the first copies are in the version's index: the copies' content matched them.
    assert_eq!(again.index.len().1, ROWS - copies.len());

    // A pass killed after shard 3's stats file and before its Parquet file: the listed rows are
    // still success there. The next pass rewrites the Parquet file and counts nothing twice.
    let before = stats(&out, 3);
    let mut writer = ShardWriter::rewrite(&out, 3, &[]).unwrap();
    for mut r in dataset::read_rows(&dataset::parquet_path(&out, 3), None).unwrap() {
        if before.late_duplicates.iter().any(|d| d.key == r.key) {
            r.status = Some(Status::Success);
            r.dup_of = None;
            r.error_message = None;
            r.jpg = Some(bodies[9].clone());
        }
        writer.push(r).unwrap();
    }
    writer.finish(before.clone()).unwrap();
    let resumed = dedupe_across_workers(&out, None, distance, &[0, 1, 2, 3]).unwrap();
    assert_eq!((resumed.marked, resumed.rewritten), (0, vec![3]));
    let after = stats(&out, 3);
    assert_eq!(after.stats, before.stats, "no row counted twice");
    assert_eq!(after.late_duplicates, before.late_duplicates);
    for (copy, _, _) in copies.iter().filter(|c| c.0 >= 12) {
        let r = dataset::read_rows(&dataset::parquet_path(&out, 3), None)
            .unwrap()
            .into_iter()
            .find(|r| r.url == server.url(&format!("/img/{copy}.jpg")))
            .unwrap();
        assert_eq!(r.status, Some(Status::Duplicate));
    }
}
