//! Shards shared by several workers through the registry's work leases: what a claim is, the
//! task that renews and completes the claims a worker holds, and claiming the next shard.
use albef_dataset as dataset;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shards shared by any number of workers through the registry's work leases: a worker claims a
/// shard when its reader reaches the shard's first row and it is neither complete nor held by a
/// live lease, renews the claims it holds every third of `lease`, and completes a claim once the
/// shard is committed. A worker that dies loses its claims when their leases run out, and
/// another worker takes those shards over ([`crate::catalog::ingest`] repeats its pass until
/// every shard is complete).
#[derive(Clone, Debug)]
pub struct ShardClaims {
    pub reg: albef_registry::Registry,
    /// The `work_leases` scope: one per dataset version.
    pub scope: String,
    /// Names this worker in the leases.
    pub owner: String,
    pub lease: Duration,
}

/// Shards a claiming worker holds at once: the one being finished and the next. A worker
/// claims its next shard only when it has room, so that the shards spread over the workers.
const CLAIMS_AT_ONCE: usize = 2;

/// The shards this worker holds claims on.
pub(super) type Held = Arc<Mutex<HashSet<u64>>>;

impl ShardClaims {
    /// Claims shard `s` once fewer than [`CLAIMS_AT_ONCE`] are held: `Ok(Some(true))` when this
    /// worker now holds it, `Ok(Some(false))` when another worker does or it is complete, and
    /// `Ok(None)` when `stop` was set while waiting for room.
    pub(super) async fn claim(
        &self,
        s: u64,
        held: &Held,
        stop: &AtomicBool,
    ) -> Result<Option<bool>> {
        // Claim with room only, so that the other workers get the shards ahead.
        while held.lock().expect("claims lock").len() >= CLAIMS_AT_ONCE
            && !stop.load(Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let claimed = self
            .reg
            .try_claim_unit(&self.scope, &s.to_string(), &self.owner, self.lease)
            .await?;
        if claimed {
            held.lock().expect("claims lock").insert(s);
        }
        Ok(Some(claimed))
    }
}

/// The task that keeps this worker's claims while the run goes on.
pub(super) struct Keeper {
    ending: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Keeper {
    pub(super) fn spawn(
        c: ShardClaims,
        output: PathBuf,
        held: Held,
        stop: Arc<AtomicBool>,
    ) -> Keeper {
        let ending = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(keep_claims(c, output, held, stop, ending.clone()));
        Keeper { ending, task }
    }

    /// Ends the task after its last completion pass.
    pub(super) async fn finish(self) -> Result<()> {
        self.ending.store(true, Ordering::Relaxed);
        self.task.await?.context("keeping the shard claims")
    }
}

/// Renews the claims in `held` while the run goes on, completes those whose shard has been
/// committed, and, when a renewal finds a claim lost, stops the run and says so. Ends, after a
/// last completion pass, when `ending` is set.
async fn keep_claims(
    c: ShardClaims,
    output: PathBuf,
    held: Held,
    stop: Arc<AtomicBool>,
    ending: Arc<AtomicBool>,
) -> Result<()> {
    let renew_every = c.lease / 3;
    let mut renewed = Instant::now();
    loop {
        let last = ending.load(Ordering::Relaxed);
        let mine: Vec<u64> = held.lock().expect("claims lock").iter().copied().collect();
        for s in mine {
            let unit = s.to_string();
            if dataset::stats_path(&output, s).exists() {
                c.reg.complete_unit(&c.scope, &unit, &c.owner).await?;
                held.lock().expect("claims lock").remove(&s);
            } else if !last
                && renewed.elapsed() >= renew_every
                && !c.reg.renew(&c.scope, &unit, &c.owner, c.lease).await?
            {
                held.lock().expect("claims lock").remove(&s);
                tracing::error!(
                    shard = s,
                    "lost the claim of shard {s} (its lease ran out); stopping"
                );
                stop.store(true, Ordering::Relaxed);
            }
        }
        if renewed.elapsed() >= renew_every {
            renewed = Instant::now();
        }
        if last {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200).min(renew_every)).await;
    }
}
