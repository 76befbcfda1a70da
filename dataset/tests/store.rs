//! Object storage against a real S3-compatible server (moto, see tests/s3_support/mod.rs):
//! files stream up in parts and back whole, listing names objects relative to the prefix, a
//! missing object reads as none, and an upload killed midway leaves no object a reader could see.
#[path = "../../tests/s3_support/mod.rs"]
mod s3_support;

use albef_dataset::store::{block_on, Remote, PART_BYTES};
use s3_support::S3Server;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The server this test binary shares, with a bucket per test; the client's variables are set
/// once, before any test opens a store.
fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = S3Server::start();
        for (k, v) in server.env() {
            std::env::set_var(k, v);
        }
        server
    })
}

fn bucket(name: &str) -> Remote {
    server().create_bucket(name);
    Remote::open(&format!("s3://{name}/data/v1")).unwrap()
}

/// Bytes that differ from part to part, so a misplaced part shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect()
}

#[test]
fn a_file_of_several_parts_goes_up_and_comes_back_whole() {
    let remote = bucket("roundtrip");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let bytes = pattern(2 * PART_BYTES + 12345);
    std::fs::write(&src, &bytes).unwrap();
    let sent = block_on(remote.upload(&src, "00000.parquet")).unwrap();
    assert_eq!(sent.bytes, bytes.len() as u64);
    block_on(remote.put("00000.stats.json", b"{}".to_vec())).unwrap();
    let listed = block_on(remote.list()).unwrap();
    let names: Vec<_> = listed.iter().map(|o| (o.name.as_str(), o.bytes)).collect();
    assert_eq!(listed[0].e_tag, sent.e_tag);
    assert_eq!(
        names,
        [
            ("00000.parquet", bytes.len() as u64),
            ("00000.stats.json", 2)
        ]
    );
    let back = dir.path().join("mirror/00000.parquet");
    std::fs::create_dir_all(back.parent().unwrap()).unwrap();
    block_on(remote.download("00000.parquet", &back)).unwrap();
    assert!(
        std::fs::read(&back).unwrap() == bytes,
        "the downloaded file differs"
    );
    assert_eq!(block_on(remote.get("missing.json")).unwrap(), None);
    assert_eq!(
        block_on(remote.get("00000.stats.json")).unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    let err = block_on(remote.download("missing.bin", &dir.path().join("m"))).unwrap_err();
    assert!(
        format!("{err:#}").contains("s3://roundtrip/data/v1/missing.bin"),
        "{err:#}"
    );
    assert!(!dir.path().join("m").exists());
}

#[test]
fn an_upload_killed_midway_leaves_no_visible_object() {
    let remote = bucket("killed");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    std::fs::write(&src, pattern(48 * PART_BYTES)).unwrap();
    // This test binary, run again as the uploader, is killed once its upload has begun.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "uploader", "--ignored"])
        .env("ALBEF_TEST_UPLOAD", &src)
        .envs(server().env())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server().has_open_upload("killed") {
        assert!(Instant::now() < deadline, "the upload never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the uploader ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(block_on(remote.list()).unwrap(), []);
    assert_eq!(block_on(remote.get("00000.parquet")).unwrap(), None);
}

/// The uploader of the test above (run only as its child).
#[test]
#[ignore = "run by an_upload_killed_midway_leaves_no_visible_object"]
fn uploader() {
    let src = std::env::var("ALBEF_TEST_UPLOAD").unwrap();
    let remote = Remote::open("s3://killed/data/v1").unwrap();
    block_on(remote.upload(src.as_ref(), "00000.parquet")).unwrap();
}
