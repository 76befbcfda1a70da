//! The work of one fetched row, in a task of its own: download (`fetch`), hash, decode, check
//! and resize (`resizer`, on a blocking thread, at most `image_threads` at once), then dedupe
//! by content. The row comes out with its status and the facts the stats count.
use super::index::content_dup_message;
use crate::dedup::{DedupIndex, DupKind};
use crate::fetch::{Fetched, Fetcher};
use crate::resizer::{self, ImageConfig, Processed, Rejected, StepTimes};
use albef_dataset::{Row, Status};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use url::Url;

/// Extra facts about one row for the stats.
#[derive(Default)]
pub(super) struct RowMeta {
    pub(super) error_kind: Option<&'static str>,
    pub(super) dup: Option<DupKind>,
    pub(super) bytes_downloaded: u64,
    pub(super) retries: u64,
    pub(super) fetch: Duration,
    pub(super) steps: StepTimes,
    pub(super) fetched: bool,
    pub(super) decoded: bool,
}

/// What the row tasks share.
pub(super) struct RowWork {
    pub(super) fetcher: Fetcher,
    /// One permit per image thread.
    pub(super) image_slots: Semaphore,
    pub(super) image_cfg: ImageConfig,
    pub(super) index: Option<Arc<Mutex<DedupIndex>>>,
    pub(super) phash_distance: Option<u32>,
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fetches, processes and dedupes one row.
pub(super) async fn fetch_row(mut row: Row, url: Url, work: Arc<RowWork>) -> (Row, RowMeta) {
    let mut meta = RowMeta::default();
    let Some(fetched) = download(&mut row, &mut meta, &url, &work.fetcher).await else {
        return (row, meta);
    };
    let _slot = work
        .image_slots
        .acquire()
        .await
        .expect("image semaphore never closes");
    let w = work.clone();
    let job = tokio::task::spawn_blocking(move || {
        let mut steps = StepTimes::default();
        let t = Instant::now();
        let sha: [u8; 32] = Sha256::digest(&fetched.bytes).into();
        steps.hash += t.elapsed();
        let out = resizer::process(&fetched.bytes, &w.image_cfg, &mut steps);
        (sha, out, steps)
    })
    .await;
    let (sha, out, steps) = match job {
        Ok(done) => done,
        Err(e) => {
            row.status = Some(Status::FailedToDecode);
            row.error_message = Some(format!("image processing panicked: {e}"));
            meta.error_kind = Some("panic");
            return (row, meta);
        }
    };
    meta.steps = steps;
    meta.decoded = true;
    row.sha256 = Some(hex(&sha));
    match out {
        Err(rej) => rejected(&mut row, &mut meta, rej),
        Ok(p) => work.keep_unless_dup(&mut row, &mut meta, p, &sha),
    }
    (row, meta)
}

/// Downloads the row's image and notes the outcome in `row` and `meta`; `None` when it failed.
async fn download(
    row: &mut Row,
    meta: &mut RowMeta,
    url: &Url,
    fetcher: &Fetcher,
) -> Option<Fetched> {
    let t = Instant::now();
    let fetched = fetcher.fetch(url).await;
    meta.fetch = t.elapsed();
    meta.fetched = true;
    row.fetched_at = Some(now_micros());
    match fetched {
        Ok(f) => {
            row.http_status = Some(i32::from(f.http_status));
            meta.bytes_downloaded = f.bytes.len() as u64;
            meta.retries = u64::from(f.attempts - 1);
            Some(f)
        }
        Err(e) => {
            row.status = Some(if e.opted_out {
                Status::OptedOut
            } else {
                Status::FailedToDownload
            });
            row.error_message = Some(e.message);
            row.http_status = e.http_status.map(i32::from);
            meta.error_kind = Some(e.kind);
            None
        }
    }
}

/// Notes an image the resizer did not keep: filtered out, or not decodable.
fn rejected(row: &mut Row, meta: &mut RowMeta, rej: Rejected) {
    row.status = Some(if rej.filtered {
        Status::FilteredOut
    } else {
        Status::FailedToDecode
    });
    row.error_message = Some(rej.message);
    if let Some((w, h)) = rej.original {
        row.original_width = Some(w as i32);
        row.original_height = Some(h as i32);
    }
    meta.error_kind = Some(if rej.filtered { "filtered" } else { "decode" });
}

impl RowWork {
    /// Notes a processed image: kept (`success`), or a duplicate of an earlier row's content.
    fn keep_unless_dup(&self, row: &mut Row, meta: &mut RowMeta, p: Processed, sha: &[u8; 32]) {
        row.width = Some(p.width as i32);
        row.height = Some(p.height as i32);
        row.original_width = Some(p.original_width as i32);
        row.original_height = Some(p.original_height as i32);
        row.phash = p.fingerprint.map(|fp| fp.hash);
        let dup = self.index.as_ref().and_then(|idx| {
            idx.lock().expect("dedupe index lock").check_content(
                sha,
                p.fingerprint.as_ref(),
                self.phash_distance,
                &row.key,
            )
        });
        match dup {
            Some((first, kind)) => {
                row.status = Some(Status::Duplicate);
                row.error_message = Some(content_dup_message(&first, kind));
                row.dup_of = Some(first);
                meta.dup = Some(kind);
            }
            None => {
                row.status = Some(Status::Success);
                row.jpg = Some(p.jpg);
            }
        }
    }
}
