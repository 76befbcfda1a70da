//! The dispatcher: takes the reader's rows in order, asks the assigner whether this worker takes
//! their shard, and turns each taken row into an output row for the writer: at once for
//! malformed URLs and URL duplicates, else through a fetch task ([`super::process`]) that holds
//! one of `max_in_flight` permits until its row reaches the writer. When the run is stopped,
//! the fetches still in flight are dropped (their shards stay incomplete and are fetched again
//! by the next run), so a stop takes effect at once rather than after every queued fetch.
use super::assign::Assigner;
use super::key_of;
use super::process::{fetch_row, RowMeta, RowWork};
use super::read::Rows;
use super::IngestConfig;
use crate::canon::{canonical, listed};
use crate::dedup::{DedupIndex, DupKind};
use crate::fetch::Fetcher;
use crate::source::InputRow;
use albef_dataset::caption::{pre_caption, MAX_WORDS};
use albef_dataset::{Row, Status};
use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use url::Url;

/// An output row on its way to the writer.
pub(super) struct Done {
    /// The row's number in the input list (its shard and place in it follow).
    pub(super) index: u64,
    pub(super) row: Row,
    pub(super) meta: RowMeta,
}

/// How the dispatch loop ended.
pub(super) enum End {
    /// The list was read to its end (or the writer went away).
    Drained,
    /// `stop` was set.
    Stopped,
    ClaimFailed(anyhow::Error),
    ReadFailed(anyhow::Error),
}

/// Where a row goes: to the writer now, or to a fetch task.
enum Route {
    Now(Row, RowMeta),
    Fetch(Row, Url),
}

pub(super) struct Dispatcher {
    work: Arc<RowWork>,
    in_flight: Arc<Semaphore>,
    shard_size: u64,
    done_tx: mpsc::Sender<Done>,
    tasks: tokio::task::JoinSet<()>,
    stop: Arc<AtomicBool>,
}

impl Dispatcher {
    pub(super) fn new(
        cfg: &IngestConfig,
        index: Option<Arc<Mutex<DedupIndex>>>,
        done_tx: mpsc::Sender<Done>,
        stop: Arc<AtomicBool>,
    ) -> Result<Dispatcher> {
        let work = RowWork {
            fetcher: Fetcher::new(cfg.fetch.clone())?,
            image_slots: Semaphore::new(cfg.image_threads.max(1)),
            image_cfg: cfg.image.clone(),
            index,
            phash_distance: cfg.phash_distance,
        };
        Ok(Dispatcher {
            work: Arc::new(work),
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
            shard_size: cfg.shard_size,
            done_tx,
            tasks: tokio::task::JoinSet::new(),
            stop,
        })
    }

    /// Dispatches the rows of `rows` until the list ends, `stop` is set or an error occurs;
    /// drops `rows` on return, which ends the reader.
    pub(super) async fn run(&mut self, mut rows: Rows, assigner: &mut Assigner) -> End {
        let mut i = 0u64;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return End::Stopped;
            }
            let next = tokio::select! {
                r = rows.recv() => r,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            };
            let input = match next {
                None => return End::Drained,
                Some(Ok(r)) => r,
                Some(Err(e)) => return End::ReadFailed(e),
            };
            let index_no = i;
            i += 1;
            let shard = index_no / self.shard_size;
            match assigner.take(shard).await {
                Ok(Some(true)) => {}
                Ok(Some(false)) => continue,
                Ok(None) => return End::Stopped,
                Err(e) => return End::ClaimFailed(e),
            }
            if !self.dispatch(index_no, input).await {
                return End::Drained;
            }
            // Reap finished tasks so the set stays small.
            while self.tasks.try_join_next().is_some() {}
        }
    }

    /// Sends input row `index` on its way; false when the writer is gone.
    async fn dispatch(&mut self, index: u64, input: InputRow) -> bool {
        let caption = input.caption;
        let text = pre_caption(caption.as_deref().unwrap_or(""), MAX_WORDS);
        let row = Row {
            key: key_of(index, self.shard_size),
            url: input.url,
            text,
            caption,
            extra: input.extra,
            ..Row::default()
        };
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        match self.route(row) {
            Route::Fetch(row, url) => {
                self.spawn_fetch(index, row, url, permit);
                true
            }
            Route::Now(row, meta) => {
                let sent = self.done_tx.send(Done { index, row, meta }).await;
                drop(permit);
                sent.is_ok()
            }
        }
    }

    /// Settles malformed URLs and URL duplicates (by canonical URL) at once; the other rows are
    /// to be fetched, at the URL as listed.
    fn route(&self, mut row: Row) -> Route {
        let urls = listed(&row.url).and_then(|url| Ok((canonical(&row.url)?, url)));
        let (key, url) = match urls {
            Ok(urls) => urls,
            Err(e) => {
                row.status = Some(Status::FailedToDownload);
                row.error_message = Some(format!("{e:#}"));
                let meta = RowMeta {
                    error_kind: Some("malformed_url"),
                    ..RowMeta::default()
                };
                return Route::Now(row, meta);
            }
        };
        let dup = self.work.index.as_ref().and_then(|idx| {
            idx.lock()
                .expect("dedupe index lock")
                .check_url(key.as_str(), &row.text, &row.key)
        });
        let Some((first, kind)) = dup else {
            return Route::Fetch(row, url);
        };
        row.status = Some(Status::Duplicate);
        row.error_message = Some(match kind {
            DupKind::UrlAndText => format!("same URL and text as {first}"),
            _ => format!("same URL as {first}"),
        });
        row.dup_of = Some(first);
        let meta = RowMeta {
            dup: Some(kind),
            ..RowMeta::default()
        };
        Route::Now(row, meta)
    }

    /// Fetches the row in a task that hands it to the writer, then gives back its permit; a
    /// stop drops the row.
    fn spawn_fetch(&mut self, index: u64, row: Row, url: Url, permit: OwnedSemaphorePermit) {
        let (work, tx, stop) = (self.work.clone(), self.done_tx.clone(), self.stop.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                (row, meta) = fetch_row(row, url, work) => {
                    let _ = tx.send(Done { index, row, meta }).await;
                }
                () = stopped(&stop) => {}
            }
            drop(permit);
        });
    }

    /// Waits for the fetch tasks; the writer's channel closes with the dispatcher.
    pub(super) async fn finish(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Returns once `stop` is set (checked every 100 ms).
async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
