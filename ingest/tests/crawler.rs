//! The crawler's manners and honesty against a scripted HTTP server on 127.0.0.1: it fetches
//! the URL as listed (signed links survive), reads robots.txt as RFC 9309 says, waits when a
//! host asks (Retry-After in both forms, 429 without one, 408 retried), keeps a bounded map of
//! hosts, writes rows in input order, and an ingest that cannot start or fails leaves no
//! BUILDING version behind.
mod common;

use albef_dataset::{self as dataset, Status};
use albef_ingest::catalog;
use albef_ingest::fetch::{FetchConfig, Fetcher, MAX_IDLE_HOSTS};
use albef_registry::{DatasetStatus, Registry};
use common::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::Url;

fn fetcher(retries: u32, backoff_ms: u64) -> Fetcher {
    Fetcher::new(FetchConfig {
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(500),
        retries,
        backoff: Duration::from_millis(backoff_ms),
        respect_robots_txt: true,
        ..FetchConfig::default()
    })
    .unwrap()
}

fn image() -> Reply {
    ok(jpeg(&photo(3, 320, 240), 90), "image/jpeg")
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

/// A signed link's query reaches the server byte for byte: order, repeated keys, `%20`, `~`,
/// a bare flag and a `utm_` parameter (all of which the canonical dedupe key rewrites).
#[tokio::test]
async fn fetches_the_url_as_listed() {
    let target = "/i.jpg?b=2&a=1&a=0&sig=x%20y~z&flag&utm_source=s";
    let server = serve(HashMap::from([(target.to_string(), image())])).await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.tsv");
    std::fs::write(
        &list,
        format!("url\tcaption\n{}\tsigned\n", server.url(target)),
    )
    .unwrap();
    let out = dir.path().join("out");
    let reg = sqlite(dir.path()).await;
    let outcome = catalog::ingest(&reg, "signed", worker_config(&list, &out, 4), json(), go())
        .await
        .unwrap();
    assert_eq!(server.hits(target), 1, "hits: {:?}", server.hits);
    assert_eq!(outcome.summary.stats.status(Status::Success), 1);
    let rows = dataset::read_rows(&dataset::parquet_path(&out, 0), None).unwrap();
    assert_eq!(
        rows[0].url,
        server.url(target),
        "the stored URL is the one fetched"
    );
}

/// Rules match path and query; a 4xx robots.txt allows all, a 5xx one disallows all (as
/// unreachable, not as an opt-out).
#[tokio::test]
async fn robots_txt_as_rfc_9309_reads_it() {
    let robots = "User-agent: a\nDisallow: /\n\nUser-agent: *\nDisallow: /*?x\n";
    let server = serve(HashMap::from([
        ("/robots.txt".to_string(), ok(robots.into(), "text/plain")),
        ("/a.jpg".to_string(), image()),
        ("/a.jpg?x=1".to_string(), image()),
    ]))
    .await;
    let f = fetcher(0, 10);
    assert!(f.fetch(&url(&server.url("/a.jpg"))).await.is_ok());
    let e = f.fetch(&url(&server.url("/a.jpg?x=1"))).await.unwrap_err();
    assert!(e.opted_out && e.kind == "robots_txt", "{e:?}");
    assert_eq!(server.hits("/a.jpg?x=1"), 0);
    assert_eq!(server.hits("/robots.txt"), 1, "read once per origin");

    let broken = serve(HashMap::from([
        ("/robots.txt".to_string(), status(503)),
        ("/b.jpg".to_string(), image()),
    ]))
    .await;
    let e = f.fetch(&url(&broken.url("/b.jpg"))).await.unwrap_err();
    assert_eq!(e.kind, "robots_txt_unreachable", "{e:?}");
    assert!(!e.opted_out);
    assert_eq!(broken.hits("/b.jpg"), 0);

    let missing = serve(HashMap::from([("/c.jpg".to_string(), image())])).await;
    assert!(f.fetch(&url(&missing.url("/c.jpg"))).await.is_ok());
}

/// Retry-After as an HTTP date is honoured, and pauses the whole host; 408 is retried.
#[tokio::test]
async fn retry_after_dates_and_408() {
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let date = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let server = serve(HashMap::from([
        (
            "/busy.jpg".to_string(),
            Reply::Full(429, vec![("Retry-After".into(), date)], Vec::new()),
        ),
        ("/other.jpg".to_string(), image()),
        (
            "/timeout.jpg".to_string(),
            Reply::Sequence(vec![status(408), image()]),
        ),
    ]))
    .await;
    let f = fetcher(0, 10);
    let e = f.fetch(&url(&server.url("/busy.jpg"))).await.unwrap_err();
    assert_eq!(e.kind, "http_429");
    let t = Instant::now();
    f.fetch(&url(&server.url("/other.jpg"))).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "the host was paused until the date: {:?}",
        t.elapsed()
    );
    let got = fetcher(1, 10)
        .fetch(&url(&server.url("/timeout.jpg")))
        .await
        .unwrap();
    assert_eq!(got.attempts, 2, "408 is retried");
}

/// A 429 without Retry-After pauses the host for the backoff delay, for every row of it.
#[tokio::test]
async fn a_429_without_retry_after_pauses_the_host() {
    let server = serve(HashMap::from([
        ("/busy.jpg".to_string(), status(429)),
        ("/other.jpg".to_string(), image()),
    ]))
    .await;
    let f = fetcher(0, 1000);
    f.fetch(&url(&server.url("/busy.jpg"))).await.unwrap_err();
    let t = Instant::now();
    f.fetch(&url(&server.url("/other.jpg"))).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

/// Hosts are keyed by name (http and https share one entry) and idle ones are forgotten, so a
/// list of many hosts does not grow the map without end.
#[tokio::test]
async fn the_host_map_is_bounded() {
    let f = fetcher(0, 10);
    // Port 9 on loopback refuses at once: each fetch is one quick failed connection.
    f.fetch(&url("http://127.0.0.1:9/a.jpg")).await.unwrap_err();
    f.fetch(&url("https://127.0.0.1:9/a.jpg"))
        .await
        .unwrap_err();
    assert_eq!(f.hosts_tracked(), 1);
    let f = Fetcher::new(FetchConfig {
        retries: 0,
        ..FetchConfig::default()
    })
    .unwrap();
    for i in 0..(MAX_IDLE_HOSTS + 500) {
        let host = format!("http://127.0.{}.{}:9/a.jpg", 1 + i / 250, 1 + i % 250);
        f.fetch(&url(&host)).await.unwrap_err();
    }
    assert!(
        f.hosts_tracked() <= MAX_IDLE_HOSTS,
        "{} hosts tracked",
        f.hosts_tracked()
    );
}

/// Rows come out in input order whatever order their fetches finish in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_written_in_input_order() {
    let mut routes = HashMap::new();
    let n = 12u64;
    for i in 0..n {
        let body = ok(jpeg(&photo(200 + i, 320, 240), 90), "image/jpeg");
        // Early rows answer last.
        let reply = Reply::Delayed(40 * (n - i), Box::new(body));
        routes.insert(format!("/{i}.jpg"), reply);
    }
    let server = serve(routes).await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.tsv");
    let lines: Vec<String> = (0..n)
        .map(|i| format!("{}\tpicture {i}", server.url(&format!("/{i}.jpg"))))
        .collect();
    std::fs::write(&list, format!("url\tcaption\n{}\n", lines.join("\n"))).unwrap();
    let out = dir.path().join("out");
    let mut cfg = worker_config(&list, &out, n);
    cfg.fetch.per_host_concurrency = n as usize;
    let reg = sqlite(dir.path()).await;
    catalog::ingest(&reg, "ordered", cfg, json(), go())
        .await
        .unwrap();
    let rows = dataset::read_rows(&dataset::parquet_path(&out, 0), None).unwrap();
    let captions: Vec<String> = rows.iter().map(|r| r.text.clone()).collect();
    let want: Vec<String> = (0..n).map(|i| format!("picture {i}")).collect();
    assert_eq!(captions, want);
}

/// Lists that cannot be ingested fail before a version or a folder exists; a list that fails
/// half-way leaves its version FAILED with the error, and the next run starts a new one.
#[tokio::test]
async fn failed_ingests_leave_no_building_version() {
    let dir = tempfile::tempdir().unwrap();
    let reg = sqlite(dir.path()).await;
    let bad = [
        ("missing.tsv", None),
        ("empty.tsv", Some(b"url\tcaption\n".to_vec())),
        ("binary.tsv", Some(vec![0u8, 159, 146, 150, 255, 0, 1, 2])),
        ("columns.tsv", Some(b"a\tb\n1\t2\n".to_vec())),
    ];
    for (name, body) in bad {
        let list = dir.path().join(name);
        if let Some(body) = body {
            std::fs::write(&list, body).unwrap();
        }
        let out = dir.path().join(format!("out-{name}"));
        let e = catalog::ingest(&reg, "bad", worker_config(&list, &out, 4), json(), go())
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains(name), "{name}: {e:#}");
        assert!(!out.exists(), "{name}: no folder made");
    }
    let good = dir.path().join("good.tsv");
    std::fs::write(&good, "url\tcaption\nhttp://127.0.0.1:9/a.jpg\ta\n").unwrap();
    let mut zero = worker_config(&good, &dir.path().join("out-zero"), 4);
    zero.shard_size = 0;
    let e = catalog::ingest(&reg, "bad", zero, json(), go())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("--shard-size"), "{e:#}");
    assert!(reg.dataset_versions(None).await.unwrap().is_empty());

    // A folder of lists whose second file is corrupt fails after the version is made.
    let lists = dir.path().join("lists");
    std::fs::create_dir(&lists).unwrap();
    std::fs::copy(&good, lists.join("a.tsv")).unwrap();
    std::fs::write(lists.join("b.tsv.gz"), b"not gzip at all").unwrap();
    let out = dir.path().join("out-half");
    let e = catalog::ingest(&reg, "half", worker_config(&lists, &out, 4), json(), go())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("FAILED"), "{e:#}");
    let versions = reg.dataset_versions(Some("half")).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].status, DatasetStatus::Failed);
    let stats = versions[0].stats.clone().unwrap_or_default();
    assert!(stats.to_string().contains("b.tsv.gz"), "{stats}");
    std::fs::remove_file(lists.join("b.tsv.gz")).unwrap();
    let again = catalog::ingest(&reg, "half", worker_config(&lists, &out, 4), json(), go())
        .await
        .unwrap();
    assert_eq!(again.version, 2, "a new version after the FAILED one");
    assert!(again.finished);
}

async fn sqlite(dir: &Path) -> Registry {
    Registry::connect(&format!("sqlite://{}", dir.join("reg.db").display()))
        .await
        .unwrap()
}

fn json() -> serde_json::Value {
    serde_json::json!({})
}

fn go() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}
