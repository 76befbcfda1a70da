//! img2dataset folders in, other trainers' formats out, with the real tools from PyPI (the
//! cached virtualenv that `make img2dataset-venv` makes; ALBEF_TEST_IMG2DATASET_PYTHON names its
//! python). img2dataset downloads a list served on 127.0.0.1 (the synthetic corpus plus a
//! missing picture and a file that is not a picture) into its parquet and its webdataset
//! layout; `albef datasets register` makes each a version without copying a picture; `train`
//! and `filter` read both. `datasets export` then writes a filtered version as ALBEF's
//! annotation JSON and as WebDataset shards, which PIL and the `webdataset` library read back
//! with the version's kept keys and captions. `datasets query`, `datasets stats` and the
//! dashboard's per-host endpoint count each host's rows and failures as the list has them.
mod dashboards_support;
mod train_support;

use albef_corpus::generate::{generate, GenerateOptions};
use albef_corpus::serve::serve;
use albef_dataset::{read_batches, string_col, Status, CAPTION, KEY};
use dashboards_support::Server;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use train_support::{albef, json_line};

/// Pictures in the corpus; the list also has the [`FAILING`] rows.
const PAIRS: u64 = 120;

fn python() -> PathBuf {
    let python = std::env::var_os("ALBEF_TEST_IMG2DATASET_PYTHON").map(PathBuf::from);
    match python {
        Some(p) if p.exists() => p,
        other => panic!(
            "no img2dataset at ALBEF_TEST_IMG2DATASET_PYTHON={other:?}: `make test` creates the \
             cached virtualenv (`make img2dataset-venv`) and sets it"
        ),
    }
}

/// Runs a script of tests/img2dataset_support with the virtualenv's python; its stdout.
fn script(name: &str, args: &[&Path]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/img2dataset_support")
        .join(name);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .unwrap_or_else(|e| panic!("{name}: cannot start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Rows of the list that fail: missing pictures on both hosts and one file that is not a
/// picture.
const FAILING: [(&str, &str); 6] = [
    ("localhost", "missing-1.jpg"),
    ("localhost", "missing-2.jpg"),
    ("localhost", "missing-3.jpg"),
    ("127.0.0.1", "missing-4.jpg"),
    ("127.0.0.1", "missing-5.jpg"),
    ("127.0.0.1", "not-a-picture.jpg"),
];

/// The corpus served on 127.0.0.1, every third picture listed under the host name `localhost`
/// and the [`FAILING`] rows added, downloaded by img2dataset into `tmp/parquet` and
/// `tmp/webdataset`. Also returns the list's rows by host, counted from the list itself.
fn downloaded(
    tmp: &Path,
    rt: &tokio::runtime::Runtime,
) -> (PathBuf, PathBuf, BTreeMap<String, u64>) {
    let corpus = tmp.join("corpus");
    let opts = GenerateOptions {
        n: PAIRS as usize,
        image_size: 64,
        seed: 11,
        ..GenerateOptions::default()
    };
    generate(&corpus, &opts).unwrap();
    std::fs::write(corpus.join("not-a-picture.jpg"), "plain text, not a JPEG").unwrap();
    let server = rt
        .block_on(serve(&corpus, "127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let base = server.base_url();
    let list = corpus.join("urls.tsv");
    let listed = std::fs::read_to_string(&list).unwrap();
    let mut lines = listed.lines();
    let mut rows = format!("{}\n", lines.next().unwrap());
    let mut by_host: BTreeMap<String, u64> = BTreeMap::new();
    for (i, line) in lines.enumerate() {
        let host = if i % 3 == 0 { "localhost" } else { "127.0.0.1" };
        rows += &format!(
            "{}\n",
            line.replace("://127.0.0.1:", &format!("://{host}:"))
        );
        *by_host.entry(host.into()).or_default() += 1;
    }
    for (host, path) in FAILING {
        let url = base.replace("://127.0.0.1:", &format!("://{host}:"));
        rows += &format!("{url}/{path}\tfails on {host}\t1\n");
        *by_host.entry(host.into()).or_default() += 1;
    }
    std::fs::write(&list, rows).unwrap();
    let layouts = ["parquet", "webdataset"].map(|layout| {
        let out = tmp.join(layout);
        script("download.py", &[&list, &out, Path::new(layout)]);
        out
    });
    rt.block_on(server.shutdown()).unwrap();
    let [parquet, webdataset] = layouts;
    (parquet, webdataset, by_host)
}

/// The keys and captions of the `success` rows of a version, from the shards `datasets show`
/// lists.
fn kept(show: &Value) -> BTreeMap<String, String> {
    let mut kept = BTreeMap::new();
    for shard in show["shards"].as_array().unwrap() {
        let path = Path::new(shard["uri"].as_str().unwrap());
        for batch in read_batches(path, Some(Status::Success), Some(&[KEY, CAPTION])).unwrap() {
            let batch = batch.unwrap();
            let (keys, captions) = (
                string_col(&batch, KEY).unwrap(),
                string_col(&batch, CAPTION).unwrap(),
            );
            for i in 0..batch.num_rows() {
                kept.insert(keys.value(i).to_string(), captions.value(i).to_string());
            }
        }
    }
    kept
}

/// `datasets query` and `datasets stats` count the rows and failures of each host as the list
/// says, and the dashboard's per-host endpoint agrees.
fn questions_by_host(home: &Path, name: &str, by_host: &BTreeMap<String, u64>) {
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for (host, _) in FAILING {
        *failures.entry(host.into()).or_default() += 1;
    }
    let sql = "SELECT host, COUNT(*) AS failures FROM pairs WHERE status <> 'success' \
               GROUP BY host ORDER BY host";
    let out = albef(home)
        .args(["datasets", "query", name, sql, "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: BTreeMap<String, u64> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap().to_string(),
                r["failures"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, failures, "{answer}");

    let stats = json_line(
        albef(home).args(["datasets", "stats", name, "--format", "json"]),
        "datasets stats",
    );
    let hosts = stats["rows by host"].as_array().unwrap().clone();
    let server = Server::start(
        &format!("sqlite://{}", home.join("registry.db").display()),
        None,
    );
    let (status, served) = server.get(&format!("/api/datasets/{name}/versions/1/hosts"));
    assert_eq!(status, 200, "{served}");
    assert_eq!(served, Value::Array(hosts.clone()));
    for row in &hosts {
        let host = row["host"].as_str().unwrap();
        assert_eq!(row["rows"].as_u64(), by_host.get(host).copied(), "{row}");
        assert_eq!(
            row["failures"].as_u64(),
            failures.get(host).copied(),
            "{row}"
        );
    }
    assert_eq!(hosts.len(), by_host.len());
    let widths = &stats["picture width (success rows)"][0];
    assert_eq!(widths["max"], 64, "img2dataset resized to 64: {widths}");
    let bad = albef(home)
        .args(["datasets", "query", name, "SELECT nope FROM pairs"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope"));
}

#[test]
fn img2dataset_folders_register_train_filter_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let home = tmp.path().join("home");
    let (parquet, webdataset, by_host) = downloaded(tmp.path(), &rt);

    let refused = albef(&home)
        .args(["datasets", "register", "wrong", "--uri"])
        .arg(&parquet)
        .args(["--format", "img2dataset-webdataset"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("00000.tar is missing"), "{stderr}");

    for (name, dir, layout) in [
        ("i2d-parquet", &parquet, "img2dataset-parquet"),
        ("i2d-wds", &webdataset, "img2dataset-webdataset"),
    ] {
        let v = json_line(
            albef(&home)
                .args(["datasets", "register", name, "--uri"])
                .arg(dir)
                .args(["--summary", "json"]),
            "datasets register",
        );
        assert_eq!(v["status"], "FINISHED", "{v}");
        assert_eq!(
            v["params"]["format"], layout,
            "layout read from the files: {v}"
        );
        assert_eq!(
            v["uri"],
            std::fs::canonicalize(dir).unwrap().display().to_string()
        );
        assert_eq!(v["rows"], PAIRS + FAILING.len() as u64);
        let by_status = &v["stats"]["by_status"];
        assert_eq!(by_status["success"], PAIRS, "{v}");
        assert_eq!(by_status["failed_to_download"], 5, "{v}");
        assert_eq!(
            by_status["failed_to_decode"], 1,
            "img2dataset's failed_to_resize: {v}"
        );
        questions_by_host(&home, name, &by_host);

        let trained = json_line(
            albef(&home)
                .args([
                    "train",
                    "--config",
                    "configs/albef-tiny.toml",
                    "--dataset",
                    name,
                ])
                .args(["--steps", "3", "--batch-size", "8", "--experiment", name])
                .args(["--format", "json"]),
            "train",
        );
        assert_eq!(trained["status"], "FINISHED", "{trained}");
        let ckpt = trained["checkpoint"].as_i64().unwrap().to_string();
        let filtered = json_line(
            albef(&home)
                .args([
                    "filter",
                    "--checkpoint",
                    &ckpt,
                    "--dataset",
                    name,
                    "--output",
                ])
                .arg(tmp.path().join(format!("filtered-{name}")))
                .args(["--keep-fraction", "0.5", "--format", "json"]),
            "filter",
        );
        assert_eq!(filtered["scored"], PAIRS, "{filtered}");
        assert_eq!(filtered["kept"], PAIRS / 2, "{filtered}");
    }

    // The filtered webdataset version, exported both ways and read back by other readers.
    let show = json_line(
        albef(&home).args(["datasets", "show", "i2d-wds@2", "--format", "json"]),
        "datasets show",
    );
    let expected = kept(&show);
    assert_eq!(expected.len() as u64, PAIRS / 2);
    let outs = ["albef-json", "webdataset"].map(|format| {
        let out = tmp.path().join(format!("export-{format}"));
        let e = json_line(
            albef(&home)
                .args([
                    "datasets",
                    "export",
                    "i2d-wds@2",
                    "--format",
                    format,
                    "--out",
                ])
                .arg(&out)
                .args(["--summary", "json"]),
            "datasets export",
        );
        assert_eq!(e["samples"], PAIRS / 2, "{e}");
        let lineage: Value =
            serde_json::from_slice(&std::fs::read(out.join("lineage.json")).unwrap()).unwrap();
        assert_eq!(lineage["version"]["stage"], "filter");
        assert_eq!(lineage["lineage"][1]["stage"], "register");
        out
    });
    let read: Value =
        serde_json::from_str(script("read_exports.py", &[&outs[0], &outs[1]]).trim()).unwrap();
    for reader in ["json", "webdataset"] {
        let got: BTreeMap<String, String> = serde_json::from_value(read[reader].clone()).unwrap();
        assert_eq!(got, expected, "{reader} export");
    }
    let again = albef(&home)
        .args([
            "datasets",
            "export",
            "i2d-wds@2",
            "--format",
            "webdataset",
            "--out",
        ])
        .arg(&outs[1])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has files"));
}
