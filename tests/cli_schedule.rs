//! `albef schedule add --tz`: the time zone is stored with the schedule and listed, the next run
//! is computed in it, and an unknown zone is refused with its name.
use serde_json::Value;
use std::process::{Command, Output};

fn albef(registry: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_albef"))
        .arg("--registry")
        .arg(registry)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn schedules_run_in_their_time_zone() {
    let dir = tempfile::tempdir().unwrap();
    let registry = format!("sqlite://{}", dir.path().join("registry.db").display());
    let ingest = ["--input", "urls.tsv", "--output", "out", "--dataset", "web"];
    let add = |name: &str, tz: &[&str]| {
        let mut args = vec!["schedule", "add", name, "--cron", "30 2 * * *"];
        args.extend(tz);
        args.extend(ingest);
        albef(&registry, &args)
    };
    let out = add("berlin", &["--tz", "Europe/Berlin"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(add("utc", &[]).status.success());
    let out = add("nowhere", &["--tz", "Mars/Olympus"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("unknown time zone \"Mars/Olympus\""),
        "{stderr}"
    );

    let out = albef(&registry, &["schedule", "list", "--format", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = list.as_array().unwrap();
    let by_name = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap().clone();
    assert_eq!(by_name("berlin")["tz"], "Europe/Berlin");
    assert_eq!(by_name("utc")["tz"], "UTC");
    // 02:30 in Berlin is 00:30 or 01:30 UTC (summer or winter time, or 01:00 UTC on the night
    // the clocks skip 02:30); in UTC it is 02:30.
    let next = |n: &str| by_name(n)["next_run"].as_str().unwrap().to_string();
    assert!(next("utc").contains("02:30:00"), "{}", next("utc"));
    assert!(
        ["00:30:00", "01:30:00", "01:00:00"]
            .iter()
            .any(|t| next("berlin").contains(t)),
        "{}",
        next("berlin")
    );
}
