//! The one stats shape of a shard, `{shard}.stats.json`, written by every stage that writes
//! shards (ingest, filter, the synthetic corpus): rows by status and, for ingest, by HTTP
//! status, error kind and dedupe layer, bytes and per-step timings; summed into a version's
//! totals.
use crate::schema::Status;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Seconds spent in each step, summed over the rows (steps overlap across rows).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StepSeconds {
    pub fetch: f64,
    pub decode: f64,
    pub resize: f64,
    pub encode: f64,
    pub hash: f64,
    pub write: f64,
}

impl StepSeconds {
    pub fn add(&mut self, o: &StepSeconds) {
        self.fetch += o.fetch;
        self.decode += o.decode;
        self.resize += o.resize;
        self.encode += o.encode;
        self.hash += o.hash;
        self.write += o.write;
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub rows: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_http_status: BTreeMap<String, u64>,
    pub by_error_kind: BTreeMap<String, u64>,
    /// Duplicates by the layer that caught them (url, url_and_text, sha256, phash).
    pub dedupe: BTreeMap<String, u64>,
    /// Bytes downloaded (before resizing) and JPEG bytes kept.
    pub bytes_downloaded: u64,
    pub bytes_kept: u64,
    /// HTTP attempts beyond the first.
    pub retries: u64,
    /// Rows fetched (not caught by URL dedupe or malformed), and rows whose bytes were decoded.
    pub fetched: u64,
    pub decoded: u64,
    /// Rows the filter stage scored.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scored: u64,
    pub seconds: StepSeconds,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Stats {
    pub fn count(&mut self, status: Status) {
        self.rows += 1;
        *self.by_status.entry(status.as_str().into()).or_default() += 1;
    }

    pub fn status(&self, status: Status) -> u64 {
        self.by_status.get(status.as_str()).copied().unwrap_or(0)
    }

    pub fn add(&mut self, o: &Stats) {
        self.rows += o.rows;
        for (mine, theirs) in [
            (&mut self.by_status, &o.by_status),
            (&mut self.by_http_status, &o.by_http_status),
            (&mut self.by_error_kind, &o.by_error_kind),
            (&mut self.dedupe, &o.dedupe),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
        self.bytes_downloaded += o.bytes_downloaded;
        self.bytes_kept += o.bytes_kept;
        self.retries += o.retries;
        self.fetched += o.fetched;
        self.decoded += o.decoded;
        self.scored += o.scored;
        self.seconds.add(&o.seconds);
    }

    /// The error kind seen most often, with its count.
    pub fn top_error(&self) -> Option<(&str, u64)> {
        self.by_error_kind
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(k, n)| (k.as_str(), *n))
    }
}

/// The stats file of one shard.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardStats {
    pub shard: u64,
    pub started_at: String,
    pub finished_at: String,
    pub duration_s: f64,
    pub parquet_bytes: u64,
    #[serde(flatten)]
    pub stats: Stats,
    /// The shard this one was made from (the filter stage's copy of a source shard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Rows found to repeat a row of another worker when the version was finished (see
    /// `crossdup`), already counted in `stats`; the journal of that pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub late_duplicates: Vec<LateDuplicate>,
}

/// A row re-marked as a duplicate when the version was finished.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LateDuplicate {
    pub key: String,
    pub dup_of: String,
    /// The dedupe layer (sha256 or phash).
    pub kind: String,
    pub error_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_round_trips() {
        let mut a = Stats::default();
        a.count(Status::Success);
        a.count(Status::Duplicate);
        *a.by_error_kind.entry("timeout".into()).or_default() += 2;
        let mut b = Stats::default();
        b.add(&a);
        b.add(&a);
        assert_eq!(b.rows, 4);
        assert_eq!(b.status(Status::Success), 2);
        assert_eq!(b.top_error(), Some(("timeout", 4)));
        let s = ShardStats {
            shard: 3,
            started_at: "a".into(),
            finished_at: "b".into(),
            duration_s: 1.5,
            parquet_bytes: 10,
            stats: b,
            source: None,
            late_duplicates: Vec::new(),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"by_status\""));
        assert_eq!(serde_json::from_str::<ShardStats>(&json).unwrap(), s);
    }
}
