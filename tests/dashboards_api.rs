//! `albef serve` end to end: the JSON API over a demo registry filled through the registry API,
//! on a real SQLite file and on a fresh Postgres database, queried over real HTTP.
mod dashboards_support;

use dashboards_support::{fill_demo, pg, Demo, Server};
use serde_json::{json, Value};

fn ids(v: &Value) -> Vec<i64> {
    let mut ids: Vec<i64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["run"]["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    ids
}

/// Every read endpoint, checked against what `fill_demo` wrote.
fn check_reads(s: &Server, d: &Demo) {
    let (st, all) = s.get("/api/runs");
    assert_eq!(st, 200, "{all}");
    assert_eq!(ids(&all), vec![d.noisy, d.filtered, d.failed]);
    let loss = all
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["run"]["id"] == d.filtered)
        .unwrap()["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "loss")
        .cloned()
        .expect("the runs listing carries metric summaries");
    assert_eq!(loss["count"], d.steps);

    // The filter language, through the query string.
    let (st, v) = s.get("/api/runs?filter=params.lr%20%3D%20%270.001%27");
    assert_eq!((st, ids(&v)), (200, vec![d.failed]));
    let (st, v) =
        s.get("/api/runs?filter=status%20%3D%20%27FINISHED%27%20and%20metrics.r1%20%3E%200.5");
    assert_eq!((st, ids(&v)), (200, vec![d.filtered]));
    let (st, v) = s.get("/api/runs?experiment=pretrain&order_by=min%28metrics.loss%29&limit=1");
    assert_eq!(
        (st, ids(&v)),
        (200, vec![d.filtered]),
        "lowest minimum loss first"
    );
    let (st, e) = s.get("/api/runs?filter=metrics.loss%20%3C");
    assert_eq!(st, 400, "{e}");
    assert!(
        e["column"].as_u64().unwrap() >= 13,
        "the error points past the operator: {e}"
    );
    assert_eq!(e["input"], "metrics.loss <");
    // 2,000 nested parentheses (4 KB, no token): a 400 at the 33rd '(', and the server lives on.
    let deep = format!("{}id%20%3D%201{}", "(".repeat(2000), ")".repeat(2000));
    let (st, e) = s.get(&format!("/api/runs?filter={deep}"));
    assert_eq!((st, e["column"].as_u64()), (400, Some(33)), "{e}");
    let order = ["min%28metrics.loss%29"; 150].join(",");
    let (st, e) = s.get(&format!("/api/runs?order_by={order}"));
    assert_eq!(st, 400, "150 order terms are refused: {e}");
    let (st, _) = s.get("/api/runs?experiment=pretrain");
    assert_eq!(st, 200, "the server still answers");
    let (st, e) = s.get("/api/runs?experiment=nope");
    assert_eq!(st, 404, "{e}");

    // One run, its metrics.
    let (st, r) = s.get(&format!("/api/runs/{}", d.noisy));
    assert_eq!(st, 200);
    assert_eq!(r["run"]["name"], "tiny-noisy");
    assert!(r["params"]
        .as_array()
        .unwrap()
        .contains(&json!(["lr", "0.0001"])));
    let (st, e) = s.get("/api/runs/999999");
    assert_eq!(st, 404, "{e}");
    assert!(e["error"].as_str().unwrap().contains("999999"));
    let (st, h) = s.get(&format!("/api/runs/{}/metrics?key=loss", d.noisy));
    assert_eq!(st, 200);
    let h = h.as_array().unwrap();
    assert_eq!(h.len() as i64, d.steps);
    assert!(h
        .windows(2)
        .all(|w| w[0]["step"].as_i64() < w[1]["step"].as_i64()));
    let (_, thin) = s.get(&format!(
        "/api/runs/{}/metrics?key=loss&max_points=50",
        d.noisy
    ));
    let thin = thin.as_array().unwrap();
    assert_eq!(thin.len(), 50);
    assert_eq!(thin.last().unwrap()["step"], d.steps - 1);
    let (st, sums) = s.get(&format!("/api/runs/{}/metrics", d.noisy));
    assert_eq!(st, 200);
    assert_eq!(
        sums.as_array().unwrap().len(),
        6,
        "loss, loss_itc, loss_itm, loss_mlm, lr, r1: {sums}"
    );
    let (_, keys) = s.get("/api/metric-keys");
    assert_eq!(
        keys,
        json!(["loss", "loss_itc", "loss_itm", "loss_mlm", "lr", "r1"])
    );

    // Comparison.
    let (st, c) = s.get(&format!("/api/compare?runs={},{}", d.noisy, d.failed));
    assert_eq!(st, 200, "{c}");
    let differs = |key: &str| {
        c["params"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["key"] == key)
            .unwrap()["differs"]
            .clone()
    };
    assert_eq!(differs("lr"), json!(true));
    assert_eq!(differs("batch_size"), json!(false));
    let r1 = c["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "r1")
        .unwrap();
    assert!(
        r1["summaries"][1].is_null(),
        "the failed run logged no r1: {r1}"
    );
    let (st, _) = s.get("/api/compare?runs=1,x");
    assert_eq!(st, 400);
    let (st, _) = s.get(&format!("/api/compare?runs={}", d.noisy));
    assert_eq!(st, 400);

    // Checkpoints, models, promotion history.
    let (_, ck) = s.get("/api/checkpoints");
    let ck = ck.as_array().unwrap();
    assert_eq!(ck.len(), 2);
    let holder = |alias: &str| {
        ck.iter()
            .find(|c| c["aliases"].as_array().unwrap().contains(&json!(alias)))
            .unwrap()["id"]
            .clone()
    };
    assert_eq!(holder("albef@production"), json!(d.checkpoints[1]));
    assert_eq!(holder("albef@staging"), json!(d.checkpoints[0]));
    let (_, models) = s.get("/api/models");
    assert_eq!(models[0]["name"], "albef");
    assert_eq!(models[0]["aliases"].as_array().unwrap().len(), 2);
    let (st, hist) = s.get("/api/models/albef/history");
    assert_eq!(st, 200);
    let kinds: Vec<&str> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["promote", "promote", "promote", "rollback", "promote"]
    );
    assert_eq!(hist[2]["gate"], "metrics.r1 >= current");
    let (st, _) = s.get("/api/models/nope/history");
    assert_eq!(st, 404);

    // Datasets.
    let (_, ds) = s.get("/api/datasets");
    let ds = ds.as_array().unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds[0]["stats"]["rows"], 3000);
    assert_eq!(ds[0]["shards"], 3);
    let (st, v2) = s.get("/api/datasets/web-demo/versions/2");
    assert_eq!(st, 200, "{v2}");
    assert_eq!(v2["version"]["stage"], "filter");
    let names: Vec<&str> = v2["histograms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["scores.itc", "scores.itm"]);
    assert_eq!(v2["histograms"][1]["counts"].as_array().unwrap().len(), 10);
    let sheet = v2["contact_sheet"].as_str().expect("a contact sheet link");
    let (st, kind, body) = s.get_raw(sheet);
    assert_eq!((st, kind.as_str()), (200, "image/svg+xml"));
    assert!(String::from_utf8_lossy(&body).contains("contact sheet"));
    let (st, v1) = s.get("/api/datasets/web-demo/versions/1");
    assert_eq!(st, 200);
    assert_eq!(v1["shards"].as_array().unwrap().len(), 3);
    assert!(v1["contact_sheet"].is_null());
    let (st, _) = s.get("/api/datasets/web-demo/versions/9");
    assert_eq!(st, 404);

    // The page and an unknown path.
    let (st, kind, body) = s.get_raw("/");
    assert_eq!((st, kind.as_str()), (200, "text/html; charset=utf-8"));
    assert!(String::from_utf8_lossy(&body).contains("albef dashboard"));
    let (st, kind, _) = s.get_raw("/app.js");
    assert_eq!((st, kind.as_str()), (200, "text/javascript; charset=utf-8"));
    let (st, e) = s.get("/api/nothing");
    assert_eq!(st, 404);
    assert!(e["error"].is_string());
}

/// Writing endpoints: off without a token; with one, they need it and change the registry.
fn check_writes(url: &str, d: &Demo) {
    let body = json!({"checkpoint": d.checkpoints[0], "alias": "candidate"});
    let open = Server::start(url, None);
    let (st, e) = open.post("/api/models/albef/promote", Some("anything"), &body);
    assert_eq!(st, 403, "{e}");
    drop(open);

    let s = Server::start(url, Some("s3cret"));
    let (st, _) = s.post("/api/models/albef/promote", None, &body);
    assert_eq!(st, 401);
    // Without the token a malformed body is refused for the token, not for its shape (which
    // would tell the body's schema to anyone).
    for bad in [json!({"nonsense": true}), json!("not an object")] {
        for path in ["/api/models/albef/promote", "/api/models/albef/rollback"] {
            let (st, e) = s.post(path, None, &bad);
            assert_eq!(st, 401, "{path} {bad}: {e}");
        }
    }
    let (st, _, _) = s.request("POST", "/api/models/albef/promote", &[], None);
    assert_eq!(
        st, 401,
        "no body and no content type: still the token first"
    );
    let (st, _) = s.post("/api/models/albef/promote", Some("wrong"), &body);
    assert_eq!(st, 401);
    let (st, ev) = s.post("/api/models/albef/promote", Some("s3cret"), &body);
    assert_eq!(st, 200, "{ev}");
    assert_eq!(ev["alias"], "candidate");
    assert_eq!(ev["actor"], "api");
    // The gate refuses a worse checkpoint for production: a conflict, and nothing changes.
    let gated = json!({"checkpoint": d.checkpoints[0], "alias": "production", "require": "metrics.r1 >= current"});
    let (st, e) = s.post("/api/models/albef/promote", Some("s3cret"), &gated);
    assert_eq!(st, 409, "{e}");
    let bad_gate =
        json!({"checkpoint": d.checkpoints[0], "alias": "production", "require": "metrics.r1 >="});
    let (st, e) = s.post("/api/models/albef/promote", Some("s3cret"), &bad_gate);
    assert_eq!(st, 400, "{e}");
    let (st, ev) = s.post(
        "/api/models/albef/rollback",
        Some("s3cret"),
        &json!({"alias": "production", "reason": "test"}),
    );
    assert_eq!(st, 200, "{ev}");
    assert_eq!(ev["new_checkpoint_id"], d.checkpoints[0]);
    let (_, hist) = s.get("/api/models/albef/history");
    assert_eq!(hist.as_array().unwrap().len(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let reg = albef_registry::Registry::connect(&url).await.unwrap();
    let demo = fill_demo(&reg, dir.path()).await.unwrap();
    let s = Server::start(&url, None);
    check_reads(&s, &demo);
    drop(s);
    check_writes(&url, &demo);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_on_postgres() {
    let (url, name) = pg::create_pg_database().await;
    let dir = tempfile::tempdir().unwrap();
    let result = tokio::spawn({
        let url = url.clone();
        let dir = dir.path().to_path_buf();
        async move {
            let reg = albef_registry::Registry::connect(&url).await.unwrap();
            let demo = fill_demo(&reg, &dir).await.unwrap();
            tokio::task::spawn_blocking(move || {
                let s = Server::start(&url, None);
                check_reads(&s, &demo);
                drop(s);
                check_writes(&url, &demo);
            })
            .await
        }
    })
    .await;
    pg::drop_pg_database(&name).await;
    result.unwrap().unwrap();
}

/// `albef runs plot`: an SVG with one line per run; PNG and unknown metrics are refused.
#[tokio::test(flavor = "multi_thread")]
async fn runs_plot_writes_svg() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let reg = albef_registry::Registry::connect(&url).await.unwrap();
    let d = fill_demo(&reg, dir.path()).await.unwrap();
    let plot = |args: &[String]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_albef"))
            .args(["--registry", &url, "runs", "plot"])
            .args(args)
            .output()
            .unwrap()
    };
    let svg = dir.path().join("loss.svg");
    let out = plot(&[
        d.noisy.to_string(),
        d.filtered.to_string(),
        "--metric".into(),
        "loss".into(),
        "--smooth".into(),
        "0.6".into(),
        "--out".into(),
        svg.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(text.matches("<polyline").count(), 2);
    assert!(
        text.contains("tiny-noisy")
            && text.contains("tiny-filtered")
            && text.contains("loss by step")
    );
    let out = plot(&[
        d.noisy.to_string(),
        "--metric".into(),
        "loss".into(),
        "--out".into(),
        "x.gif".into(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("x.gif: expected a file name ending in .svg or .png"));
    let out = plot(&[
        d.failed.to_string(),
        "--metric".into(),
        "r1".into(),
        "--out".into(),
        svg.display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no metric \"r1\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
