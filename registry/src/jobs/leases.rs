//! Work leases: units of work (e.g. chunks of a URL list) that workers on several machines share
//! through the registry. A worker claims a unit for a while, renews the lease while it works,
//! and completes it; a unit whose lease ran out can be claimed by another worker. Owners are
//! named `HOST:PID[:...]` ([`process_owner`]), so that a process can tell a dead local holder.
use crate::{host_name, Registry};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;

/// A claimed unit of work.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct UnitLease {
    pub unit: String,
    /// The last worker that claimed it.
    pub owner: String,
    /// How many times it was claimed (a takeover after an expired lease counts again).
    pub attempts: i64,
    pub done: bool,
    /// Whether its lease had run out when it was read (a done unit's lease is not renewed).
    pub expired: bool,
}

impl Registry {
    /// Claims `unit` of `scope` for `owner` until now + `lease` (now by the database's clock, as
    /// for every lease). Succeeds when the unit is new, its lease has expired, or `owner` already
    /// holds it; never when it is done.
    pub async fn try_claim_unit(
        &self,
        scope: &str,
        unit: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool> {
        let now = self.db.clock_ms().await?;
        let changed = self
            .db
            .q("INSERT INTO work_leases (scope, unit, owner, lease_until, attempts, done) \
                VALUES ($1, $2, $3, $4, 1, FALSE) \
                ON CONFLICT (scope, unit) DO UPDATE SET owner = excluded.owner, \
                  lease_until = excluded.lease_until, attempts = work_leases.attempts + 1 \
                WHERE NOT work_leases.done AND (work_leases.lease_until < $5 OR work_leases.owner = excluded.owner)")
            .bind(scope.to_string())
            .bind(unit.to_string())
            .bind(owner.to_string())
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .execute(&self.db)
            .await
            .with_context(|| format!("claiming unit {unit:?} of {scope:?} for {owner:?}"))?;
        Ok(changed == 1)
    }

    /// Extends a lease that `owner` still holds; false when it lost it or the unit is done.
    pub async fn renew(
        &self,
        scope: &str,
        unit: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool> {
        let now = self.db.clock_ms().await?;
        let changed = self
            .db
            .q("UPDATE work_leases SET lease_until = $4 \
                WHERE scope = $1 AND unit = $2 AND owner = $3 AND NOT done AND lease_until >= $5")
            .bind(scope.to_string())
            .bind(unit.to_string())
            .bind(owner.to_string())
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .execute(&self.db)
            .await
            .with_context(|| format!("renewing unit {unit:?} of {scope:?} for {owner:?}"))?;
        Ok(changed == 1)
    }

    /// Marks a unit that `owner` holds as done; false when `owner` does not hold it.
    pub async fn complete_unit(&self, scope: &str, unit: &str, owner: &str) -> Result<bool> {
        let changed = self
            .db
            .q("UPDATE work_leases SET done = TRUE WHERE scope = $1 AND unit = $2 AND owner = $3 AND NOT done")
            .bind(scope.to_string())
            .bind(unit.to_string())
            .bind(owner.to_string())
            .execute(&self.db)
            .await
            .with_context(|| format!("completing unit {unit:?} of {scope:?} for {owner:?}"))?;
        Ok(changed == 1)
    }

    /// Every unit of `scope` that has been claimed, with its holder and whether its lease has run
    /// out, in unit order.
    pub async fn unit_leases(&self, scope: &str) -> Result<Vec<UnitLease>> {
        let now = self.db.clock_ms().await?;
        let rows = self
            .db
            .q(
                "SELECT unit, owner, lease_until, attempts, done FROM work_leases \
                WHERE scope = $1 ORDER BY unit",
            )
            .bind(scope.to_string())
            .fetch_all(&self.db)
            .await
            .with_context(|| format!("listing the units of {scope:?}"))?;
        rows.iter()
            .map(|r| {
                let lease_until: i64 = r.get("lease_until")?;
                Ok(UnitLease {
                    unit: r.get("unit")?,
                    owner: r.get("owner")?,
                    attempts: r.get("attempts")?,
                    done: r.get("done")?,
                    expired: lease_until < now,
                })
            })
            .collect()
    }

    /// Who holds `unit` of `scope` under a lease that has not run out, and until when.
    pub(crate) async fn unit_holder(
        &self,
        scope: &str,
        unit: &str,
    ) -> Result<Option<(String, i64)>> {
        let now = self.db.clock_ms().await?;
        let row = self
            .db
            .q("SELECT owner, lease_until FROM work_leases WHERE scope = $1 AND unit = $2 AND lease_until >= $3")
            .bind(scope.to_string())
            .bind(unit.to_string())
            .bind(now)
            .fetch_optional(&self.db)
            .await?;
        match row {
            Some(r) => Ok(Some((r.get("owner")?, r.get("lease_until")?))),
            None => Ok(None),
        }
    }

    /// Hands `unit` of `scope` from `from` to `to` until now + `lease`, even while `from`'s lease
    /// runs (the caller knows `from` is dead); false when `from` no longer holds it.
    pub(crate) async fn take_over_unit(
        &self,
        scope: &str,
        unit: &str,
        from: &str,
        to: &str,
        lease: Duration,
    ) -> Result<bool> {
        let now = self.db.clock_ms().await?;
        let changed = self
            .db
            .q(
                "UPDATE work_leases SET owner = $4, lease_until = $5, attempts = attempts + 1 \
                WHERE scope = $1 AND unit = $2 AND owner = $3",
            )
            .bind(scope.to_string())
            .bind(unit.to_string())
            .bind(from.to_string())
            .bind(to.to_string())
            .bind(now + lease.as_millis() as i64)
            .execute(&self.db)
            .await?;
        Ok(changed == 1)
    }

    /// Forgets `unit` of `scope` if `owner` holds it, so that the next claim starts afresh.
    pub(crate) async fn release_unit(&self, scope: &str, unit: &str, owner: &str) -> Result<()> {
        self.db
            .q("DELETE FROM work_leases WHERE scope = $1 AND unit = $2 AND owner = $3")
            .bind(scope.to_string())
            .bind(unit.to_string())
            .bind(owner.to_string())
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// The units of `scope` that are done.
    pub async fn done_units(&self, scope: &str) -> Result<Vec<String>> {
        let rows = self
            .db
            .q("SELECT unit FROM work_leases WHERE scope = $1 AND done ORDER BY unit")
            .bind(scope.to_string())
            .fetch_all(&self.db)
            .await
            .with_context(|| format!("listing done units of {scope:?}"))?;
        rows.iter().map(|r| Ok(r.get("unit")?)).collect()
    }
}

/// This process as a lock or lease owner: `HOST:PID`. Owners in this form let a later process
/// on the same host see that the holder died.
pub fn process_owner() -> String {
    format!(
        "{}:{}",
        host_name().unwrap_or_else(|| "localhost".into()),
        std::process::id()
    )
}

/// Whether `owner` (`HOST:PID[:...]`) names a process of this host that no longer runs.
pub(crate) fn is_dead_local_process(owner: &str) -> bool {
    let mut parts = owner.split(':');
    let (Some(host), Some(Ok(pid))) = (parts.next(), parts.next().map(str::parse::<u32>)) else {
        return false;
    };
    host_name().is_some_and(|me| me == host)
        && Path::new("/proc/self").exists()
        && !Path::new(&format!("/proc/{pid}")).exists()
}
