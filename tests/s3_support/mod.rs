//! A real S3-compatible server for the object-storage tests: `moto_server` from PyPI's
//! `moto[server]` (in the cached virtualenv that `make s3-venv` creates and ALBEF_TEST_S3_SERVER
//! names), started on a free port of 127.0.0.1 and stopped when dropped. moto implements the S3
//! REST API the store client speaks (multipart uploads, ranged GETs, listing) in one process
//! that needs no disk or set-up, which is why it was chosen over a server built from source.
#![allow(dead_code)] // each test binary uses its own part

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "albef-test-key";
pub const SECRET_KEY: &str = "albef-test-secret";

/// A running moto server; killed on drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    /// Starts the server and waits until it answers.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(server_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start moto_server");
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.request("GET", "/").is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Creates `bucket` (moto takes unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        let answer = self.request("PUT", &format!("/{bucket}")).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// Whether `bucket` has a multipart upload that was started and neither completed nor
    /// aborted.
    pub fn has_open_upload(&self, bucket: &str) -> bool {
        let answer = self.request("GET", &format!("/{bucket}?uploads")).unwrap();
        answer.contains("<Upload>")
    }

    /// The variables that point the AWS clients at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// One HTTP/1.1 request; the whole answer.
    fn request(&self, method: &str, path: &str) -> std::io::Result<String> {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut conn = TcpStream::connect(addr)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        Ok(answer)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary() -> PathBuf {
    match std::env::var_os("ALBEF_TEST_S3_SERVER").map(PathBuf::from) {
        Some(p) if p.exists() => p,
        other => panic!(
            "ALBEF_TEST_S3_SERVER ({other:?}) must name moto_server: run `make s3-venv`, or the tests through `make test`"
        ),
    }
}
