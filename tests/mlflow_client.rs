//! MLflow's own Python client (mlflow-skinny from PyPI, in the cached virtualenv that `make
//! mlflow-venv` creates and ALBEF_TEST_MLFLOW_PYTHON names) against `albef serve` on 127.0.0.1,
//! on a SQLite file and on a fresh Postgres database: `tests/mlflow_support/log_with_mlflow.py`
//! logs, searches and sets an alias through MLflow's public API, then `albef runs show` must
//! hold every value bit for bit and the alias must be an audited promotion. Without the token,
//! every write is refused with 401 and nothing is stored.
mod dashboards_support;

use albef_registry::{json_float, Registry};
use dashboards_support::{pg, Server};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOKEN: &str = "mlflow-test-token";
const MODEL: &str = "albef-mlflow";
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/mlflow_support/log_with_mlflow.py"
);

fn mlflow_python() -> PathBuf {
    let python = std::env::var_os("ALBEF_TEST_MLFLOW_PYTHON").map(PathBuf::from);
    match python {
        Some(p) if p.exists() => p,
        other => panic!(
            "no MLflow client at ALBEF_TEST_MLFLOW_PYTHON={other:?}: `make test` creates the \
             cached virtualenv (`make mlflow-venv`) and sets it"
        ),
    }
}

/// Runs the script with the server's address (and the token when given); panics with its
/// output unless it succeeds.
fn script(server: &Server, token: Option<&str>, args: &[&str], dir: &Path) {
    let mut cmd = Command::new(mlflow_python());
    cmd.arg(SCRIPT)
        .args(args)
        .current_dir(dir)
        .env("MLFLOW_TRACKING_URI", server.url(""))
        .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("DO_NOT_TRACK", "true")
        .env_remove("MLFLOW_TRACKING_TOKEN");
    if let Some(t) = token {
        cmd.env("MLFLOW_TRACKING_TOKEN", t);
    }
    let out = cmd.output().expect("running the MLflow client script");
    assert!(
        out.status.success(),
        "log_with_mlflow.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `albef --registry URL ARGS... --format json`, read as `T`.
fn albef_json<T: DeserializeOwned>(url: &str, args: &[&str]) -> T {
    let out = Command::new(env!("CARGO_BIN_EXE_albef"))
        .args(["--registry", url])
        .args(args)
        .args(["--format", "json"])
        .output()
        .expect("running albef");
    assert!(
        out.status.success(),
        "albef {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("albef {args:?}: {e}"))
}

/// An MLflow request: (status, JSON body).
fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (status, _, bytes) = server.request(
        method,
        &format!("/api/2.0/mlflow/{path}"),
        &headers,
        Some(body),
    );
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (status, value)
}

/// Every writing endpoint without the token, and with a wrong one: 401 in MLflow's form.
fn writes_are_refused(server: &Server, run: i64) {
    let run_id = format!("{run:032x}");
    let writes = [
        ("POST", "experiments/create", json!({"name": "intruder"})),
        (
            "POST",
            "runs/create",
            json!({"experiment_id": "0", "run_name": "intruder"}),
        ),
        (
            "POST",
            "runs/update",
            json!({"run_id": run_id, "status": "KILLED"}),
        ),
        ("POST", "runs/delete", json!({"run_id": run_id})),
        (
            "POST",
            "runs/log-batch",
            json!({"run_id": run_id, "metrics": [{"key": "x", "value": 1, "timestamp": 1, "step": 0}]}),
        ),
        (
            "POST",
            "runs/log-metric",
            json!({"run_id": run_id, "key": "x", "value": 1, "timestamp": 1}),
        ),
        (
            "POST",
            "runs/log-parameter",
            json!({"run_id": run_id, "key": "p", "value": "1"}),
        ),
        (
            "POST",
            "runs/set-tag",
            json!({"run_id": run_id, "key": "t", "value": "1"}),
        ),
        (
            "POST",
            "runs/delete-tag",
            json!({"run_id": run_id, "key": "t"}),
        ),
        ("POST", "registered-models/create", json!({"name": MODEL})),
        (
            "POST",
            "registered-models/alias",
            json!({"name": MODEL, "alias": "a", "version": "1"}),
        ),
        (
            "DELETE",
            "registered-models/alias",
            json!({"name": MODEL, "alias": "a"}),
        ),
    ];
    for (method, path, body) in &writes {
        for token in [None, Some("wrong")] {
            let (status, e) = call(server, method, path, token, body);
            assert_eq!(
                (status, e["error_code"].as_str()),
                (401, Some("UNAUTHENTICATED")),
                "{method} {path}: {e}"
            );
        }
    }
}

/// `runs show --history` as printed, each value kept as its JSON text: serde_json's default
/// number parser is not correctly rounded, `json_float::parse` is.
#[derive(Deserialize)]
struct Shown {
    history: Vec<ShownMetric>,
}

#[derive(Deserialize)]
struct ShownMetric {
    key: String,
    points: Vec<ShownPoint>,
}

#[derive(Deserialize)]
struct ShownPoint {
    step: i64,
    logged_at: i64,
    value: Box<RawValue>,
}

/// The run's points by key as `runs show --history` prints them: [step, logged_at, bits].
fn shown_history(shown: &Shown) -> BTreeMap<String, Vec<(i64, i64, String)>> {
    let mut out = BTreeMap::new();
    for m in &shown.history {
        let points = m
            .points
            .iter()
            .map(|p| {
                let value = json_float::parse(p.value.get()).expect("a metric value");
                (p.step, p.logged_at, format!("{:016x}", value.to_bits()))
            })
            .collect();
        out.insert(m.key.clone(), points);
    }
    out
}

/// What the script logged and read back through MLflow's client, in the same form.
fn logged_history(logged: &Value) -> BTreeMap<String, Vec<(i64, i64, String)>> {
    let mut out = BTreeMap::new();
    for (key, points) in logged["metrics"].as_object().unwrap() {
        let points = points
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_i64().unwrap(),
                    p[1].as_i64().unwrap(),
                    p[2].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.insert(key.clone(), points);
    }
    out
}

/// `albef runs show` holds what the client logged, bit for bit.
fn check_run(url: &str, logged: &Value) -> i64 {
    let run_id = logged["run_id"].as_str().unwrap();
    let run = i64::from_str_radix(run_id, 16).unwrap();
    let args = ["runs", "show", &run.to_string(), "--history"];
    let shown: Value = albef_json(url, &args);
    assert_eq!(shown["run"]["name"], "baseline");
    assert_eq!(shown["run"]["experiment"], "mlflow-client");
    assert_eq!(shown["run"]["status"], "FINISHED");
    assert_eq!(
        shown["params"],
        json!([["batch_size", "32"], ["lr", "1e-3"], ["optimizer", "adamw"]])
    );
    for (k, v) in logged["tags"].as_object().unwrap() {
        assert!(
            shown["tags"].as_array().unwrap().contains(&json!([k, v])),
            "tag {k}: {shown}"
        );
    }
    assert!(shown["tags"]
        .as_array()
        .unwrap()
        .contains(&json!(["t", "v"])));
    let history = shown_history(&albef_json(url, &args));
    assert_eq!(history, logged_history(logged));
    let exact = &history["exact"];
    let bits: Vec<&str> = exact.iter().map(|p| p.2.as_str()).collect();
    assert_eq!(
        bits,
        [
            "3fd3333333333334",
            "8000000000000000",
            "7ff8000000000000",
            "7ff0000000000000",
            "fff0000000000000",
            "00000000000007e8",
            "7fefffffffffffff",
            "4004000000000000"
        ],
        "0.1 + 0.2, -0.0, NaN, inf, -inf, 1e-320, the largest double, 2.5"
    );
    assert_eq!(exact[7].1, 1_700_000_000_007, "the client's own timestamp");
    assert_eq!(history["loss"].len(), 50);
    let summary = shown["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "exact")
        .unwrap()
        .clone();
    assert_eq!(
        (
            summary["last"].clone(),
            summary["max"].clone(),
            summary["min"].clone()
        ),
        (json!(2.5), json!("NaN"), json!("-Infinity"))
    );
    run
}

/// The alias set through MLflow is a promotion by `mlflow`; deleting it is a recorded removal.
fn check_alias(
    server: &Server,
    url: &str,
    reg: &Registry,
    rt: &tokio::runtime::Runtime,
    ckpt: i64,
) {
    let history: Value = albef_json(url, &["ckpt", "history", "--model", MODEL]);
    let e = &history.as_array().unwrap()[0];
    assert_eq!(
        (
            e["kind"].as_str(),
            e["actor"].as_str(),
            e["alias"].as_str(),
            e["new"].as_i64()
        ),
        (
            Some("promote"),
            Some("mlflow"),
            Some("champion"),
            Some(ckpt)
        ),
        "{history}"
    );
    let holder = rt
        .block_on(reg.resolve_checkpoint(&format!("models:/{MODEL}@champion")))
        .unwrap();
    assert_eq!(holder.id, ckpt);
    let alias = json!({"name": MODEL, "alias": "champion"});
    let (status, body) = call(
        server,
        "DELETE",
        "registered-models/alias",
        Some(TOKEN),
        &alias,
    );
    assert_eq!(status, 200, "{body}");
    let (status, e) = call(
        server,
        "GET",
        &format!("registered-models/alias?name={MODEL}&alias=champion"),
        None,
        &json!({}),
    );
    assert_eq!(
        (status, e["error_code"].as_str()),
        (404, Some("RESOURCE_DOES_NOT_EXIST")),
        "{e}"
    );
    let history: Value = albef_json(url, &["ckpt", "history", "--model", MODEL]);
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            last["kind"].as_str(),
            last["actor"].as_str(),
            last["new"].clone()
        ),
        (Some("remove"), Some("mlflow"), Value::Null)
    );
}

/// The calls the script does not make, over plain HTTP: a run name taken gets a suffix, renaming,
/// a tag set and deleted, a NaN sent as MLflow's client sends it, search by run id.
fn check_other_calls(server: &Server, run: i64) {
    let run_id = format!("{run:032x}");
    let post = |path: &str, body: Value| {
        let (status, answer) = call(server, "POST", path, Some(TOKEN), &body);
        assert_eq!(status, 200, "{path}: {answer}");
        answer
    };
    let found = post(
        "runs/search",
        json!({"filter": format!("attributes.run_id = '{run_id}'")}),
    );
    let info = &found["runs"][0]["info"];
    assert_eq!(info["run_id"], run_id.as_str(), "{found}");
    let twin = post(
        "runs/create",
        json!({"experiment_id": info["experiment_id"], "run_name": "baseline"}),
    );
    assert_eq!(twin["run"]["info"]["run_name"], "baseline-2");
    let twin_id = twin["run"]["info"]["run_id"].as_str().unwrap().to_string();
    let renamed = post(
        "runs/update",
        json!({"run_id": twin_id, "run_name": "twin"}),
    );
    assert_eq!(renamed["run_info"]["run_name"], "twin");
    post(
        "runs/set-tag",
        json!({"run_id": twin_id, "key": "gone", "value": "soon"}),
    );
    post("runs/delete-tag", json!({"run_id": twin_id, "key": "gone"}));
    post(
        "runs/log-metric",
        json!({"run_id": twin_id, "key": "nan", "value": "NaN", "timestamp": 5, "step": 1}),
    );
    let (status, history) = call(
        server,
        "GET",
        &format!("metrics/get-history?run_id={twin_id}&metric_key=nan"),
        None,
        &json!({}),
    );
    assert_eq!(
        (status, &history["metrics"]),
        (
            200,
            &json!([{"key": "nan", "value": "NaN", "timestamp": 5, "step": 1}])
        )
    );
    let tags = post(
        "runs/search",
        json!({"filter": "attributes.run_name = 'twin'"}),
    )["runs"][0]["data"]["tags"]
        .clone();
    assert!(
        !tags.as_array().unwrap().iter().any(|t| t["key"] == "gone"),
        "{tags}"
    );
}

/// MLflow's error form for a malformed id, a run that does not exist, and a filter albef refuses.
fn check_errors(server: &Server) {
    let (status, e) = call(server, "GET", "runs/get?run_id=abc", None, &json!({}));
    assert_eq!(
        (status, e["error_code"].as_str()),
        (400, Some("INVALID_PARAMETER_VALUE")),
        "{e}"
    );
    let (status, e) = call(
        server,
        "GET",
        &format!("runs/get?run_id={:032x}", 999_999),
        None,
        &json!({}),
    );
    assert_eq!(
        (status, e["error_code"].as_str()),
        (404, Some("RESOURCE_DOES_NOT_EXIST")),
        "{e}"
    );
    let (status, e) = call(
        server,
        "POST",
        "runs/search",
        None,
        &json!({"filter": "attributes.artifact_uri = 'x'"}),
    );
    assert_eq!(
        (status, e["error_code"].as_str()),
        (400, Some("INVALID_PARAMETER_VALUE")),
        "{e}"
    );
}

fn scenario(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = rt.block_on(Registry::connect(url)).unwrap();
    let trained = rt
        .block_on(reg.create_run("checkpoints", "trained", &json!({})))
        .unwrap();
    let file = dir.path().join("model.safetensors");
    std::fs::write(&file, "weights").unwrap();
    let ckpt = rt
        .block_on(reg.register_checkpoint(trained, &file, 100, &[]))
        .unwrap();
    let server = Server::start(url, Some(TOKEN));

    script(&server, None, &["refused"], dir.path());
    writes_are_refused(&server, trained);
    let runs = rt.block_on(reg.runs(None)).unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        [trained],
        "nothing stored without the token"
    );
    assert!(rt.block_on(reg.experiment("mlflow-client")).is_err());
    assert!(rt
        .block_on(reg.run_detail(trained))
        .unwrap()
        .tags
        .is_empty());
    assert!(
        rt.block_on(reg.promotion_history(MODEL)).is_err(),
        "no model made without the token"
    );

    let out = dir.path().join("logged.json");
    let version = ckpt.to_string();
    script(
        &server,
        Some(TOKEN),
        &["log", out.to_str().unwrap(), MODEL, &version],
        dir.path(),
    );
    let logged: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let run = check_run(url, &logged);
    check_other_calls(&server, run);
    assert_eq!(logged["model_version_run_id"], format!("{trained:032x}"));
    check_alias(&server, url, &reg, &rt, ckpt);
    check_errors(&server);
}

#[test]
fn mlflow_client_logs_into_albef_serve_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(&format!(
        "sqlite://{}",
        dir.path().join("registry.db").display()
    ));
}

#[test]
fn mlflow_client_logs_into_albef_serve_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, name) = rt.block_on(pg::create_pg_database());
    let result = std::panic::catch_unwind(|| scenario(&url));
    rt.block_on(pg::drop_pg_database(&name));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
