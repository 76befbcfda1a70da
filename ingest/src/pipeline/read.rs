//! The reader: a thread that streams the input list's rows, in order, to the dispatcher through
//! a bounded channel, so that memory does not grow with the length of the list.
use crate::source::{self, InputRow, InputSpec};
use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The rows the reader hands on (or the error that ended the list).
pub(super) type Rows = mpsc::Receiver<Result<InputRow>>;

/// Starts the reader thread; it ends at the end of the list, when `stop` is set or when the
/// receiver is dropped.
pub(super) fn spawn(
    spec: InputSpec,
    stop: Arc<AtomicBool>,
) -> (std::thread::JoinHandle<Result<()>>, Rows) {
    let (row_tx, row_rx) = mpsc::channel::<Result<InputRow>>(1024);
    let reader = std::thread::spawn(move || -> Result<()> {
        for row in source::read_rows(&spec)? {
            if stop.load(Ordering::Relaxed) || row_tx.blocking_send(row).is_err() {
                break;
            }
        }
        Ok(())
    });
    (reader, row_rx)
}
