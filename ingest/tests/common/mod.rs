//! Test helpers: photo-like generated images (low-texture ones in `graphics`) and a scripted
//! HTTP/1.1 server on 127.0.0.1 (a real socket; each route decides status, headers and how the
//! body is sent, stalls included).
#![allow(dead_code)]
pub mod graphics;
use image::{Rgb, RgbImage};
use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A photo-like image: smooth colour field, a shape, noise; `seed` decides everything.
pub fn photo(seed: u64, w: u32, h: u32) -> RgbImage {
    let mut rng = fastrand::Rng::with_seed(seed);
    let c0 = [rng.f32() * 255.0, rng.f32() * 255.0, rng.f32() * 255.0];
    let c1 = [rng.f32() * 255.0, rng.f32() * 255.0, rng.f32() * 255.0];
    let shape = [rng.f32() * 255.0, rng.f32() * 255.0, rng.f32() * 255.0];
    let (cx, cy, r) = (rng.f32(), rng.f32(), 0.1 + rng.f32() * 0.3);
    let (fx, fy) = (rng.f32() * 6.0, rng.f32() * 6.0);
    RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
        let t = 0.5 + 0.5 * ((u * fx + v * fy) * std::f32::consts::PI).sin();
        let inside = ((u - cx).powi(2) + (v - cy).powi(2)).sqrt() < r;
        let noise = (rng.f32() - 0.5) * 12.0;
        let px = |i: usize| {
            let base = if inside {
                shape[i]
            } else {
                c0[i] * t + c1[i] * (1.0 - t)
            };
            (base + noise).clamp(0.0, 255.0) as u8
        };
        Rgb([px(0), px(1), px(2)])
    })
}

pub fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .unwrap();
    out
}

pub fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A PNG that declares `w`x`h` pixels (valid signature, IHDR and CRC) with a token IDAT.
pub fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(&body);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

/// How a route answers.
#[derive(Clone)]
pub enum Reply {
    /// Status, extra headers, body.
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// Headers promising `len` bytes, a few bytes, then silence for a long time.
    Stall(usize),
    /// Answers in turn, the last one repeated.
    Sequence(Vec<Reply>),
    /// Waits this many milliseconds after reading the request, then answers (not a sequence).
    Delayed(u64, Box<Reply>),
}

pub fn ok(body: Vec<u8>, content_type: &str) -> Reply {
    Reply::Full(
        200,
        vec![("Content-Type".into(), content_type.into())],
        body,
    )
}

pub fn status(code: u16) -> Reply {
    Reply::Full(code, vec![], format!("status {code}").into_bytes())
}

pub fn redirect(to: &str) -> Reply {
    Reply::Full(302, vec![("Location".into(), to.into())], Vec::new())
}

pub struct Server {
    pub addr: SocketAddr,
    /// Requests seen per path.
    pub hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// Serves `routes` (path -> reply; anything else is 404) until the test ends.
pub async fn serve(routes: HashMap<String, Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = Arc::new(routes);
    let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counters: Arc<Mutex<HashMap<String, Arc<AtomicUsize>>>> = Arc::default();
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (routes, hits, counters) = (routes.clone(), h.clone(), counters.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                let n = counters
                    .lock()
                    .unwrap()
                    .entry(path.clone())
                    .or_default()
                    .fetch_add(1, Ordering::SeqCst);
                let mut reply = routes.get(&path).cloned().unwrap_or_else(|| status(404));
                if let Reply::Sequence(seq) = reply {
                    reply = seq[n.min(seq.len() - 1)].clone();
                }
                if let Reply::Delayed(ms, inner) = reply {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    reply = *inner;
                }
                match reply {
                    Reply::Full(code, headers, body) => {
                        let mut head = format!(
                            "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                            body.len()
                        );
                        for (k, v) in headers {
                            head += &format!("{k}: {v}\r\n");
                        }
                        head += "\r\n";
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(&body).await;
                    }
                    Reply::Stall(len) => {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len}\r\n\r\n");
                        let _ = sock.write_all(head.as_bytes()).await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    Reply::Sequence(_) | Reply::Delayed(..) => {
                        unreachable!("sequences and delays are resolved above")
                    }
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    Server { addr, hits }
}

/// An ingest of the list `list` into `out` in shards of `shard_size` rows, as the tests of
/// workers run it: a 5 s timeout, no retries, two requests per host, no progress bar.
pub fn worker_config(
    list: &std::path::Path,
    out: &std::path::Path,
    shard_size: u64,
) -> albef_ingest::IngestConfig {
    albef_ingest::IngestConfig {
        input: albef_ingest::source::InputSpec {
            input: list.display().to_string(),
            ..Default::default()
        },
        output: out.to_path_buf(),
        shard_size,
        fetch: albef_ingest::fetch::FetchConfig {
            timeout: Duration::from_secs(5),
            retries: 0,
            per_host_concurrency: 2,
            ..albef_ingest::fetch::FetchConfig::default()
        },
        progress: false,
        ..albef_ingest::IngestConfig::default()
    }
}
