//! Leases and schedules follow the database's clock, not the worker's: a worker whose clock runs
//! an hour ahead or behind (run under `faketime`, from Debian's faketime package) can neither take
//! over a live lease nor hand out its own too early. Postgres only: SQLite runs in the worker's
//! process, so its clock is that worker's.
mod common;
use albef_registry::{now_ms, Registry};
use common::{create_pg_database, drop_pg_database};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(600);
const HOUR_MS: i64 = 3_600_000;

/// Runs [`skewed_worker`] in a child process whose clock is off by `offset` (e.g. "+1h"), with
/// `action`; returns its stdout, which ends with what the worker's clock read and its result.
fn run_skewed(offset: &str, url: &str, action: &str) -> String {
    let out = Command::new("faketime")
        .args(["-f", offset])
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "skewed_worker", "--nocapture"])
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("ALBEF_SKEWED_URL", url)
        .env("ALBEF_SKEWED_ACTION", action)
        .output()
        .expect(
            "cannot run faketime: install it with `make test-sysdeps` (Debian package faketime)",
        );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value a skewed worker printed as `key=value`.
fn field(stdout: &str, key: &str) -> i64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {stdout}"))
        .trim()
        .parse()
        .unwrap()
}

/// The child's side: one registry call made under a skewed clock, printed as `result=0|1`.
#[tokio::test]
#[ignore = "run by leases_and_schedules_follow_the_database_clock under faketime"]
async fn skewed_worker() {
    let url = std::env::var("ALBEF_SKEWED_URL").expect("set by the parent test");
    let reg = Registry::connect(&url).await.unwrap();
    println!("clock={}", now_ms());
    let done = match std::env::var("ALBEF_SKEWED_ACTION").unwrap().as_str() {
        "claim-unit" => reg
            .try_claim_unit("s", "held", "fast", LEASE)
            .await
            .unwrap(),
        "claim-own-unit" => reg.try_claim_unit("s", "own", "slow", LEASE).await.unwrap(),
        "claim-job" => reg.claim_job("fast", LEASE).await.unwrap().is_some(),
        "add-schedule" => {
            let s = reg
                .add_schedule("hourly", "@hourly", "UTC", &json!({}))
                .await
                .unwrap();
            println!("next={}", s.next_run_at.unwrap());
            true
        }
        other => panic!("unknown action {other}"),
    };
    println!("result={}", i64::from(done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_schedules_follow_the_database_clock() {
    let (url, name) = create_pg_database().await;
    let reg = Registry::connect(&url).await.unwrap();

    // A worker an hour ahead sees this lease as long expired by its own clock.
    assert!(reg
        .try_claim_unit("s", "held", "true", LEASE)
        .await
        .unwrap());
    let out = run_skewed("+1h", &url, "claim-unit");
    assert!(
        (field(&out, "clock") - now_ms() - HOUR_MS).abs() < 60_000,
        "faketime did not skew: {out}"
    );
    assert_eq!(
        field(&out, "result"),
        0,
        "the fast worker took over a live lease"
    );
    reg.add_schedule("once", "@yearly", "UTC", &json!({}))
        .await
        .unwrap();
    reg.trigger_schedule("once", 3).await.unwrap().unwrap();
    assert!(reg.claim_job("true", LEASE).await.unwrap().is_some());
    let out = run_skewed("+1h", &url, "claim-job");
    assert_eq!(
        field(&out, "result"),
        0,
        "the fast worker took over a live job"
    );

    // A worker an hour behind would write a lease that has already run out for everyone else.
    let out = run_skewed("-1h", &url, "claim-own-unit");
    assert_eq!(field(&out, "result"), 1);
    assert!(
        !reg.try_claim_unit("s", "own", "true", LEASE).await.unwrap(),
        "the slow worker's fresh lease had already expired"
    );
    let own = reg.unit_leases("s").await.unwrap();
    assert!(own.iter().all(|u| !u.expired), "{own:?}");

    // Nor does it schedule a tick that is already due.
    let out = run_skewed("-1h", &url, "add-schedule");
    assert!(field(&out, "next") > now_ms(), "{out}");

    drop(reg);
    drop_pg_database(&name).await;
}
