//! The Grafana dashboards under `dashboards/grafana/` run on the real registry schema: every
//! template variable's and every panel's SQL, with Grafana's macros and variables expanded the
//! way Grafana's Postgres datasource expands them, against a fresh Postgres database filled
//! through the registry API (plus ingestion job rows, which no registry API writes yet).
mod dashboards_support;

use dashboards_support::{fill_demo, pg};
use serde_json::Value;
use sqlx::{Column, Connection, PgConnection, Row};
use std::path::Path;

/// The dashboard time range and `$__interval` the queries are expanded with.
struct Range {
    from_s: i64,
    to_s: i64,
    interval_s: i64,
}

fn rfc3339(secs: i64) -> String {
    // Days since the epoch to a civil date (Howard Hinnant's algorithm), to avoid a time crate.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Splits `a, f(b, c)` at its top-level commas.
fn split_args(args: &str) -> Vec<String> {
    let (mut out, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for c in args.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn interval_seconds(s: &str) -> i64 {
    let s = s.trim().trim_matches('\'');
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n.parse().unwrap_or_else(|_| panic!("bad interval {s:?}"));
    n * match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => panic!("unknown interval unit {other:?}"),
    }
}

/// Grafana's Postgres macros.
fn expand_macros(sql: &str, r: &Range) -> String {
    let interval = format!("{}s", r.interval_s);
    let mut sql = sql
        .replace("$__interval_ms", &(r.interval_s * 1000).to_string())
        .replace("$__interval", &interval);
    while let Some(start) = sql.find("$__") {
        let name_end = start
            + 3
            + sql[start + 3..]
                .find('(')
                .unwrap_or_else(|| panic!("macro without arguments in {sql}"));
        let name = &sql[start + 3..name_end];
        let (mut depth, mut end) = (0, name_end);
        for (i, c) in sql[name_end..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = name_end + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let args = split_args(&sql[name_end + 1..end]);
        let (from, to) = (rfc3339(r.from_s), rfc3339(r.to_s));
        let group = |args: &[String]| {
            let secs = interval_seconds(&args[1]);
            format!("floor(extract(epoch from {})/{secs})*{secs}", args[0])
        };
        let text = match name {
            "timeFilter" => format!("{} BETWEEN '{from}' AND '{to}'", args[0]),
            "timeFrom" => format!("'{from}'"),
            "timeTo" => format!("'{to}'"),
            "unixEpochFrom" => r.from_s.to_string(),
            "unixEpochTo" => r.to_s.to_string(),
            "time" => format!("{} AS \"time\"", args[0]),
            "timeGroup" => group(&args),
            "timeGroupAlias" => format!("{} AS \"time\"", group(&args)),
            other => panic!("the test does not know Grafana macro $__{other}"),
        };
        sql.replace_range(start..=end, &text);
    }
    sql
}

/// Grafana's variable interpolation for SQL datasources: a multi-value variable becomes a
/// quoted, comma-separated list; a single value is inserted as it is.
fn expand_variables(sql: &str, vars: &[(String, bool, Vec<String>)]) -> String {
    let mut sql = sql.to_string();
    // Longest names first, so `$run` does not eat `$runs`.
    let mut vars: Vec<_> = vars.iter().collect();
    vars.sort_by_key(|(name, _, _)| std::cmp::Reverse(name.len()));
    for (name, multi, values) in vars {
        let text = if *multi {
            values
                .iter()
                .map(|v| format!("'{}'", v.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            values[0].clone()
        };
        sql = sql
            .replace(&format!("${{{name}}}"), &text)
            .replace(&format!("${name}"), &text);
    }
    sql
}

/// Runs a query; returns its rows as text cells keyed by column.
async fn run(conn: &mut PgConnection, what: &str, sql: &str) -> Vec<Vec<(String, Option<String>)>> {
    assert!(
        !sql.contains('$'),
        "{what}: unexpanded macro or variable in\n{sql}"
    );
    // Casting every column to text in a wrapper keeps the decoding simple for any column type.
    let wrapped = format!("SELECT to_jsonb(q)::text AS row FROM ({sql}) q");
    let rows = sqlx::query(&wrapped)
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}\n{sql}"));
    rows.iter()
        .map(|r| {
            assert_eq!(r.columns()[0].name(), "row");
            let obj: Value = serde_json::from_str(&r.get::<String, _>("row")).unwrap();
            obj.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        (!v.is_null())
                            .then(|| v.as_str().map(str::to_string).unwrap_or(v.to_string())),
                    )
                })
                .collect()
        })
        .collect()
}

/// Panels, nested rows included.
fn panels(list: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in list.as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(&p["panels"]));
    }
    out
}

/// Ingestion schedule, job and two attempts (the first lost its lease), as the scheduler writes them.
async fn insert_job_runs(conn: &mut PgConnection, now_ms: i64) {
    for sql in [
        format!("INSERT INTO ingestion_schedules (name, cron, config, created_at) VALUES ('nightly-web', '0 3 * * *', '{{}}', {now_ms})"),
        format!("INSERT INTO ingestion_jobs (schedule_id, config, status, run_at, created_at, attempts) SELECT id, '{{}}', 'SUCCEEDED', {now_ms}, {now_ms}, 2 FROM ingestion_schedules"),
        format!("INSERT INTO ingestion_job_runs (job_id, owner, attempt, status, started_at, finished_at, error) SELECT id, 'worker-a', 1, 'FAILED', {}, {}, 'lease expired' FROM ingestion_jobs", now_ms - 600_000, now_ms - 300_000),
        format!("INSERT INTO ingestion_job_runs (job_id, owner, attempt, status, started_at, finished_at, dataset_version_id) SELECT id, 'worker-b', 2, 'SUCCEEDED', {}, {now_ms}, 1 FROM ingestion_jobs", now_ms - 290_000),
    ] {
        sqlx::query(&sql).execute(&mut *conn).await.unwrap_or_else(|e| panic!("{e}: {sql}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_panel_query_runs_on_postgres() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/grafana");
    let datasource =
        std::fs::read_to_string(root.join("provisioning/datasources/albef.yaml")).unwrap();
    assert!(datasource.contains("uid: albef-postgres") && datasource.contains("type: postgres"));
    let provider =
        std::fs::read_to_string(root.join("provisioning/dashboards/albef.yaml")).unwrap();
    assert!(
        provider.contains("type: file")
            && provider.contains("path: /var/lib/grafana/dashboards/albef")
    );

    let (url, name) = pg::create_pg_database().await;
    let dir = tempfile::tempdir().unwrap();
    let outcome = tokio::spawn({
        let (url, root, dir) = (url.clone(), root.clone(), dir.path().to_path_buf());
        async move {
            let reg = albef_registry::Registry::connect(&url).await.unwrap();
            fill_demo(&reg, &dir).await.unwrap();
            let mut conn = PgConnection::connect(&url).await.unwrap();
            let now_ms = albef_registry::now_ms();
            insert_job_runs(&mut conn, now_ms).await;
            let range = Range {
                from_s: now_ms / 1000 - 86_400,
                to_s: now_ms / 1000 + 3600,
                interval_s: 300,
            };

            let mut files: Vec<_> = std::fs::read_dir(root.join("dashboards"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            assert_eq!(files.len(), 2, "{files:?}");
            let mut checked = 0;
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                let dash: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let title = dash["title"].as_str().unwrap();
                assert!(dash["uid"].is_string(), "{title}: no uid");
                // Variables in order: later ones may use earlier ones.
                let mut vars: Vec<(String, bool, Vec<String>)> = Vec::new();
                for v in dash["templating"]["list"].as_array().unwrap() {
                    let vname = v["name"].as_str().unwrap().to_string();
                    assert_eq!(
                        v["datasource"]["uid"], "albef-postgres",
                        "{title}: variable {vname}"
                    );
                    let sql = expand_variables(
                        &expand_macros(v["query"].as_str().unwrap(), &range),
                        &vars,
                    );
                    let rows = run(&mut conn, &format!("{title}: variable {vname}"), &sql).await;
                    let values: Vec<String> = rows
                        .iter()
                        .map(|r| {
                            r.iter()
                                .find(|(k, _)| k == "__value")
                                .or(r.first())
                                .unwrap()
                                .1
                                .clone()
                                .unwrap()
                        })
                        .collect();
                    assert!(
                        !values.is_empty(),
                        "{title}: variable {vname} has no values\n{sql}"
                    );
                    vars.push((vname, v["multi"].as_bool().unwrap_or(false), values));
                }
                for p in panels(&dash["panels"]) {
                    let ptitle = p["title"].as_str().unwrap();
                    for t in p["targets"].as_array().into_iter().flatten() {
                        assert_eq!(
                            t["datasource"]["uid"], "albef-postgres",
                            "{title}: {ptitle}"
                        );
                        let raw = t["rawSql"].as_str().unwrap();
                        let sql = expand_variables(&expand_macros(raw, &range), &vars);
                        let rows =
                            run(&mut conn, &format!("{title}: panel {ptitle:?}"), &sql).await;
                        assert!(
                            !rows.is_empty(),
                            "{title}: panel {ptitle:?} returned no rows\n{sql}"
                        );
                        if t["format"] == "time_series" {
                            assert!(
                                rows[0].iter().any(|(k, _)| k == "time"),
                                "{title}: {ptitle:?} has no time column"
                            );
                        }
                        checked += 1;
                    }
                }
            }
            assert_eq!(checked, 13, "panel queries checked");
            // A spot check of values: the job runs panel shows the takeover.
            let owners = run(
                &mut conn,
                "owners",
                "SELECT owner FROM ingestion_job_runs ORDER BY attempt",
            )
            .await;
            assert_eq!(owners.len(), 2);
        }
    })
    .await;
    pg::drop_pg_database(&name).await;
    outcome.unwrap();
}

#[test]
fn macros_expand_like_grafana() {
    let r = Range {
        from_s: 0,
        to_s: 86_400,
        interval_s: 60,
    };
    assert_eq!(
        expand_macros("WHERE $__timeFilter(t) AND x > $__unixEpochFrom()", &r),
        "WHERE t BETWEEN '1970-01-01T00:00:00Z' AND '1970-01-02T00:00:00Z' AND x > 0"
    );
    assert_eq!(
        expand_macros("SELECT $__timeGroupAlias(to_timestamp(a), $__interval)", &r),
        "SELECT floor(extract(epoch from to_timestamp(a))/60)*60 AS \"time\""
    );
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    let vars = vec![
        ("run".to_string(), true, vec!["1".into(), "2".into()]),
        ("m".to_string(), false, vec!["loss".into()]),
    ];
    assert_eq!(
        expand_variables("id IN ($run) AND k = '$m'", &vars),
        "id IN ('1','2') AND k = 'loss'"
    );
}
