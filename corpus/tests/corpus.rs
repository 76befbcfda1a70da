//! The synthetic corpus: deterministic for a seed, noise and duplicates as asked and recorded,
//! a clean held-out split with distinct captions, and served over real HTTP on 127.0.0.1.
use albef_corpus::generate::{DupKind, HELDOUT_URLS, TRAIN_URLS};
use albef_corpus::{generate, read_pairs, serve, GenerateOptions, Split};
use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

fn options(n: usize, seed: u64) -> GenerateOptions {
    GenerateOptions {
        n,
        seed,
        image_size: 64,
        heldout: n / 5,
        ..Default::default()
    }
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(dir.join("images"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_same_seed_gives_the_same_corpus() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut opts = options(60, 11);
    opts.noise = 0.3;
    opts.dup_frac = 0.2;
    generate(a.path(), &opts).unwrap();
    opts.threads = 3;
    generate(b.path(), &opts).unwrap();
    opts.seed = 12;
    generate(c.path(), &opts).unwrap();
    let pairs = |d: &Path| fs::read_to_string(d.join("pairs.tsv")).unwrap();
    assert_eq!(pairs(a.path()), pairs(b.path()));
    assert_eq!(files(a.path()), files(b.path()));
    assert_ne!(pairs(a.path()), pairs(c.path()));
    assert_ne!(files(a.path()), files(c.path()));
}

#[test]
fn noise_duplicates_and_heldout_are_as_asked_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let opts = GenerateOptions {
        n: 500,
        seed: 3,
        noise: 0.3,
        dup_frac: 0.2,
        image_size: 96,
        heldout: 100,
        ..Default::default()
    };
    let summary = generate(dir.path(), &opts).unwrap();
    let pairs = read_pairs(dir.path()).unwrap();
    let train: Vec<_> = pairs.iter().filter(|p| p.split == Split::Train).collect();
    let heldout: Vec<_> = pairs.iter().filter(|p| p.split == Split::Heldout).collect();
    assert_eq!(heldout.len(), 100);
    assert_eq!(train.len(), 400 + 80, "400 pictures and 20% duplicates");
    assert_eq!(summary.train_rows, train.len());

    // 30% of training rows had their captions passed on; a few may land on an equal caption.
    let noisy = train.iter().filter(|p| !p.clean()).count();
    let swapped = (0.3 * train.len() as f64).round() as usize;
    assert!(
        noisy <= swapped && noisy * 10 >= swapped * 8,
        "{noisy} noisy of {swapped}"
    );
    assert_eq!(summary.noisy_rows, noisy);

    // Held out: clean, no duplicates, every caption distinct.
    assert!(heldout.iter().all(|p| p.clean() && p.dup_of.is_none()));
    let captions: HashSet<_> = heldout.iter().map(|p| &p.caption).collect();
    assert_eq!(captions.len(), heldout.len());

    // Exact duplicates are byte-identical to their original; near ones are smaller re-encodings.
    let read = |path: &str| fs::read(dir.path().join(path)).unwrap();
    let (mut exact, mut near) = (0, 0);
    for p in &train {
        if let Some((of, kind)) = &p.dup_of {
            let (copy, original) = (read(&p.path), read(of));
            match kind {
                DupKind::Exact => {
                    exact += 1;
                    assert_eq!(copy, original, "{} copies {of}", p.path);
                }
                DupKind::Near => {
                    near += 1;
                    assert_ne!(copy, original);
                    let (width, _) = albef_corpus::dataset::jpeg_size(&copy).unwrap();
                    assert_eq!(width, 96 * 85 / 100);
                }
            }
            assert_ne!(
                p.true_caption,
                pairs.iter().find(|o| &o.path == of).unwrap().true_caption
            );
        }
    }
    assert_eq!((exact, near), (40, 40));

    // The URL lists: one row per pair of the split, with the clean flag.
    let urls = fs::read_to_string(dir.path().join(TRAIN_URLS)).unwrap();
    assert_eq!(urls.lines().count(), 1 + train.len());
    assert!(urls.starts_with("url\tcaption\tclean\nhttp://127.0.0.1:8000/images/"));
    let held = fs::read_to_string(dir.path().join(HELDOUT_URLS)).unwrap();
    assert_eq!(held.lines().count(), 1 + heldout.len());
}

#[test]
fn bad_options_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(10, 0);
    opts.heldout = 10;
    let e = generate(dir.path(), &opts).unwrap_err().to_string();
    assert!(e.contains("held-out"), "{e}");
    opts.heldout = 0;
    opts.noise = 1.5;
    let e = generate(dir.path(), &opts).unwrap_err().to_string();
    assert!(e.contains("--noise 1.5"), "{e}");
    opts.noise = 0.0;
    opts.pair_share = -0.1;
    let e = generate(dir.path(), &opts).unwrap_err().to_string();
    assert!(e.contains("--pair-share -0.1"), "{e}");
}

#[test]
fn single_object_corpus_has_distinct_heldout_scenes_and_a_clear_limit() {
    // With no two-object scenes there are 8 colours x 4 shapes x 2 sizes x 9 places x 3
    // backgrounds = 1,728 scenes; held-out pictures show distinct ones whatever the phrasing.
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(600, 5);
    opts.pair_share = 0.0;
    opts.heldout = 500;
    opts.image_size = 32;
    generate(dir.path(), &opts).unwrap();
    let pairs = read_pairs(dir.path()).unwrap();
    assert!(pairs.iter().all(|p| !p.caption.contains(" of a ")
        && !p.caption.contains("above")
        && !p.caption.contains("below")));
    let scenes: HashSet<String> = pairs
        .iter()
        .filter(|p| p.split == Split::Heldout)
        .map(|p| scene_key(&p.caption))
        .collect();
    assert_eq!(scenes.len(), 500);

    let dir = tempfile::tempdir().unwrap();
    opts.n = 2000;
    opts.heldout = 1800;
    let e = generate(dir.path(), &opts).unwrap_err().to_string();
    assert!(
        e.contains("--heldout 1800") && e.contains("distinct scenes"),
        "{e}"
    );
}

/// A caption reduced to what it says, whatever the phrasing of `Scene::caption`.
fn scene_key(caption: &str) -> String {
    let background = ["white", "gray", "black"]
        .into_iter()
        .find(|b| caption.contains(b))
        .unwrap();
    let what = caption
        .trim_start_matches(&format!("a {background} picture with "))
        .trim_end_matches(&format!(" on a {background} background"))
        .trim_end_matches(&format!(", {background} background"));
    format!("{what} | {background}")
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, response[split + 4..].to_vec())
}

#[test]
fn the_corpus_is_served_over_http_under_the_bound_address() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &options(20, 5)).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(serve(dir.path(), "127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let addr = server.addr;
    assert_ne!(addr.port(), 0);

    let urls = fs::read_to_string(dir.path().join(TRAIN_URLS)).unwrap();
    let first = urls
        .lines()
        .nth(1)
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    let prefix = format!("http://{addr}/");
    assert!(first.starts_with(&prefix), "{first} is not under {prefix}");
    let path = first[prefix.len() - 1..].to_string();
    let request = path.clone();
    let (status, body) = std::thread::spawn(move || http_get(addr, &request))
        .join()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, fs::read(dir.path().join(&path[1..])).unwrap());
    for missing in ["/images/none.jpg", "/../etc/passwd", "/"] {
        let m = missing.to_string();
        let (status, _) = std::thread::spawn(move || http_get(addr, &m))
            .join()
            .unwrap();
        assert_eq!(status, 404, "{missing}");
    }
    runtime.block_on(server.shutdown()).unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "the server still accepts connections"
    );
}
