//! The assigner: decides, shard by shard as the reader reaches them, which shards this worker
//! takes. Complete shards are skipped; the others are this worker's share (`shard %
//! num_workers == worker_index`) or, with [`ShardClaims`], the ones it manages to claim.
use super::claims::{Held, ShardClaims};
use super::IngestConfig;
use anyhow::Result;
use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

pub(super) struct Assigner {
    /// Shards complete before the run started.
    done: HashSet<u64>,
    shard_size: u64,
    worker_index: u64,
    num_workers: u64,
    claims: Option<ShardClaims>,
    held: Held,
    stop: Arc<AtomicBool>,
    /// The shard the reader is in and whether this worker takes it.
    current: Option<(u64, bool)>,
    /// Shards this worker does not take.
    skipped: HashSet<u64>,
}

impl Assigner {
    pub(super) fn new(cfg: &IngestConfig, done: HashSet<u64>, stop: Arc<AtomicBool>) -> Assigner {
        Assigner {
            done,
            shard_size: cfg.shard_size,
            worker_index: cfg.worker_index,
            num_workers: cfg.num_workers,
            claims: cfg.claims.clone(),
            held: Arc::new(Mutex::new(HashSet::new())),
            stop,
            current: None,
            skipped: HashSet::new(),
        }
    }

    /// Whether shard `s` may be this worker's. With claims, the shards are decided as the reader
    /// reaches them, so every shard that is not complete may be.
    fn mine(&self, s: u64) -> bool {
        !self.done.contains(&s)
            && (self.claims.is_some() || s % self.num_workers == self.worker_index)
    }

    /// The rows of the shards that may be this worker's, of a list of `total` rows (for the
    /// progress bar).
    pub(super) fn todo_rows(&self, total: u64) -> u64 {
        (0..total.div_ceil(self.shard_size))
            .filter(|&s| self.mine(s))
            .map(|s| self.shard_size.min(total - s * self.shard_size))
            .sum()
    }

    /// The claims this worker holds (shared with the [`super::claims::Keeper`]).
    pub(super) fn held(&self) -> Held {
        self.held.clone()
    }

    /// How many shards this worker did not take.
    pub(super) fn skipped(&self) -> u64 {
        self.skipped.len() as u64
    }

    /// Whether this worker takes shard `s`, which the reader is in: decided at its first row
    /// (claiming it when shards are claimed), remembered for its other rows. `Ok(None)`: the run
    /// was stopped while waiting to claim.
    pub(super) async fn take(&mut self, s: u64) -> Result<Option<bool>> {
        let take = match (self.current, &self.claims) {
            (Some((cur, take)), _) if cur == s => take,
            (_, Some(c)) if self.mine(s) => match c.claim(s, &self.held, &self.stop).await? {
                Some(claimed) => claimed,
                None => return Ok(None),
            },
            _ => self.mine(s),
        };
        self.current = Some((s, take));
        if !take {
            self.skipped.insert(s);
        }
        Ok(Some(take))
    }
}
