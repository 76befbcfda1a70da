//! The dedupe index: canonical URLs (with the caption's hash) before fetching, sha256 of the
//! bytes and picture fingerprints (64-bit pHash and 8x8 thumbnail, `phash.rs`) after.
//! Near-duplicate search uses multi-index hashing: the hash is cut into four 16-bit bands and,
//! by the pigeonhole principle, a hash within distance d of a stored one agrees with it within
//! d/4 bits on at least one band, so a query looks at a few buckets instead of every entry; a
//! candidate is a copy only when the thumbnails agree too. The index is saved with the dataset
//! (`dedup.index`) so that a later version admits no duplicate of anything earlier.
use crate::phash::{Fingerprint, Thumb};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

pub const INDEX_FILE: &str = "dedup.index";
/// Format 2 stores each picture's thumbnail; format 1 (pHashes only) is still read.
const MAGIC: &[u8; 8] = b"ALBEFDX2";
const MAGIC_V1: &[u8; 8] = b"ALBEFDX1";
const BANDS: usize = 4;

/// A stable 64-bit hash of a string (first 8 bytes of its sha256).
pub fn hash64(s: &str) -> u64 {
    let d = Sha256::digest(s.as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// How a row duplicates an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DupKind {
    /// Same canonical URL and the same caption text.
    UrlAndText,
    /// Same canonical URL, another caption (the image is not fetched twice).
    Url,
    /// Same bytes (sha256).
    Exact,
    /// pHash within the distance (possibly of the mirrored image), thumbnails alike.
    Near(u32),
}

impl DupKind {
    pub fn label(self) -> &'static str {
        match self {
            DupKind::UrlAndText => "url_and_text",
            DupKind::Url => "url",
            DupKind::Exact => "sha256",
            DupKind::Near(_) => "phash",
        }
    }
}

#[derive(Default)]
pub struct DedupIndex {
    keys: Vec<Box<str>>,
    /// canonical URL hash -> (key id, text hash)
    urls: HashMap<u64, (u32, u64)>,
    /// sha256 prefix -> key id
    sha: HashMap<u64, u32>,
    /// (pHash, key id)
    phashes: Vec<(u64, u32)>,
    /// The thumbnail of each entry of `phashes`; `None` for entries of a format-1 index, which
    /// are judged by their pHash alone.
    thumbs: Vec<Option<Thumb>>,
    /// For each band, 2^16 buckets of positions in `phashes`.
    bands: Vec<Vec<Vec<u32>>>,
}

/// All 16-bit values within Hamming distance `r` of `v`.
fn neighbours(v: u16, r: u32, out: &mut Vec<u16>) {
    out.clear();
    out.push(v);
    let mut frontier = vec![(v, 0u32)];
    for _ in 0..r {
        let mut next = Vec::new();
        for &(x, lowest) in &frontier {
            for b in lowest..16 {
                let y = x ^ (1 << b);
                out.push(y);
                next.push((y, b + 1));
            }
        }
        frontier = next;
    }
}

impl DedupIndex {
    pub fn new() -> DedupIndex {
        DedupIndex {
            bands: (0..BANDS).map(|_| vec![Vec::new(); 1 << 16]).collect(),
            ..Default::default()
        }
    }

    pub fn len(&self) -> (usize, usize, usize) {
        (self.urls.len(), self.sha.len(), self.phashes.len())
    }

    fn key_id(&mut self, key: &str) -> u32 {
        if self.keys.last().is_some_and(|k| &**k == key) {
            return (self.keys.len() - 1) as u32;
        }
        self.keys.push(key.into());
        (self.keys.len() - 1) as u32
    }

    pub fn key(&self, id: u32) -> &str {
        &self.keys[id as usize]
    }

    /// The first row with this canonical URL, or `None` after recording `key` as its first row.
    pub fn check_url(
        &mut self,
        canonical_url: &str,
        text: &str,
        key: &str,
    ) -> Option<(String, DupKind)> {
        let (u, t) = (hash64(canonical_url), hash64(text));
        if let Some(&(id, text_hash)) = self.urls.get(&u) {
            let kind = if text_hash == t {
                DupKind::UrlAndText
            } else {
                DupKind::Url
            };
            return Some((self.key(id).to_string(), kind));
        }
        let id = self.key_id(key);
        self.urls.insert(u, (id, t));
        None
    }

    /// The nearest stored picture (distance, key id) whose pHash is within `max_distance` of
    /// `fp`'s hash or its mirror's and whose thumbnail confirms the match.
    pub fn nearest(&self, fp: &Fingerprint, max_distance: u32) -> Option<(u32, u32)> {
        let mut best: Option<(u32, u32)> = None;
        let mut cands = Vec::new();
        for (h, thumb) in [(fp.hash, fp.thumb), (fp.mirror, fp.thumb.mirrored())] {
            for band in 0..BANDS {
                let v = (h >> (16 * band)) as u16;
                neighbours(v, max_distance / BANDS as u32, &mut cands);
                for &c in &cands {
                    for &pos in &self.bands[band][usize::from(c)] {
                        let (stored, id) = self.phashes[pos as usize];
                        let d = (stored ^ h).count_ones();
                        if d <= max_distance
                            && best.is_none_or(|(bd, _)| d < bd)
                            && self.thumbs[pos as usize].is_none_or(|t| t.matches(&thumb))
                        {
                            best = Some((d, id));
                        }
                    }
                }
            }
        }
        best
    }

    fn insert_phash(&mut self, phash: u64, thumb: Option<Thumb>, id: u32) {
        let pos = self.phashes.len() as u32;
        self.phashes.push((phash, id));
        self.thumbs.push(thumb);
        for band in 0..BANDS {
            self.bands[band][usize::from((phash >> (16 * band)) as u16)].push(pos);
        }
    }

    /// The first copy of these bytes (sha256) or of this picture (its pHash or mirrored pHash
    /// within `max_distance` and thumbnails alike; `None` turns near-duplicate search off), or
    /// `None` after recording `key`. A picture without a fingerprint takes part in exact dedupe
    /// only.
    pub fn check_content(
        &mut self,
        sha256: &[u8; 32],
        fingerprint: Option<&Fingerprint>,
        max_distance: Option<u32>,
        key: &str,
    ) -> Option<(String, DupKind)> {
        let s = u64::from_le_bytes(sha256[..8].try_into().expect("8 bytes"));
        if let Some(&id) = self.sha.get(&s) {
            return Some((self.key(id).to_string(), DupKind::Exact));
        }
        if let (Some(d), Some(fp)) = (max_distance, fingerprint) {
            if let Some((dist, id)) = self.nearest(fp, d) {
                return Some((self.key(id).to_string(), DupKind::Near(dist)));
            }
        }
        let id = self.key_id(key);
        self.sha.insert(s, id);
        if let Some(fp) = fingerprint {
            self.insert_phash(fp.hash, Some(fp.thumb), id);
        }
        None
    }

    /// Records a row of an earlier (complete) shard: its URL, and its content (sha256 in hex,
    /// pHash, thumbnail) when it succeeded.
    pub fn add_existing(
        &mut self,
        key: &str,
        canonical_url: Option<&str>,
        text: &str,
        content: Option<(&str, u64, Thumb)>,
    ) {
        let id = self.key_id(key);
        if let Some(u) = canonical_url {
            self.urls.entry(hash64(u)).or_insert((id, hash64(text)));
        }
        if let Some((sha_hex, phash, thumb)) = content {
            if let Some(s) = sha_hex
                .get(..16)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            {
                // The hex string is big-endian bytes; the map keys the first 8 bytes little-endian.
                let s = u64::from_le_bytes(s.to_be_bytes());
                if self.sha.insert(s, id).is_none() {
                    self.insert_phash(phash, Some(thumb), id);
                }
            }
        }
    }

    /// Writes the index to `path` atomically. Keys without a `/` get `prefix` (e.g.
    /// `name@3/`) so that rows of this version stay identifiable from later versions.
    pub fn save(&self, path: &Path, prefix: &str) -> Result<()> {
        let mut buf = BufWriter::new(Vec::new());
        buf.write_all(MAGIC)?;
        buf.write_all(&(self.keys.len() as u64).to_le_bytes())?;
        for k in &self.keys {
            let k = if k.contains('/') {
                k.to_string()
            } else {
                format!("{prefix}{k}")
            };
            buf.write_all(&(k.len() as u32).to_le_bytes())?;
            buf.write_all(k.as_bytes())?;
        }
        buf.write_all(&(self.urls.len() as u64).to_le_bytes())?;
        for (u, (id, t)) in &self.urls {
            buf.write_all(&u.to_le_bytes())?;
            buf.write_all(&id.to_le_bytes())?;
            buf.write_all(&t.to_le_bytes())?;
        }
        buf.write_all(&(self.phashes.len() as u64).to_le_bytes())?;
        let by_id: HashMap<u32, u64> = self.sha.iter().map(|(s, id)| (*id, *s)).collect();
        for ((p, id), thumb) in self.phashes.iter().zip(&self.thumbs) {
            buf.write_all(&by_id.get(id).copied().unwrap_or_default().to_le_bytes())?;
            buf.write_all(&p.to_le_bytes())?;
            buf.write_all(&id.to_le_bytes())?;
            match thumb {
                Some(t) => {
                    buf.write_all(&[1])?;
                    buf.write_all(&t.0)?;
                }
                None => buf.write_all(&[0])?,
            }
        }
        let bytes = buf.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        albef_dataset::write_atomic(path, &bytes)
    }

    /// Reads an index written by [`save`](DedupIndex::save), or by a version of albef before
    /// thumbnails (format 1: its pictures are then judged by their pHash alone).
    pub fn load(path: &Path) -> Result<DedupIndex> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open dedupe index {}", path.display()))?;
        let mut r = BufReader::new(file);
        let ctx = || format!("dedupe index {} is truncated or corrupt", path.display());
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).with_context(ctx)?;
        let thumbs = &magic == MAGIC;
        if !thumbs && &magic != MAGIC_V1 {
            bail!(
                "{} is not a dedupe index (or one of a newer format: use the albef that wrote it)",
                path.display()
            );
        }
        if !thumbs {
            tracing::warn!(
                index = %path.display(),
                "this dedupe index predates thumbnails: near duplicates of its pictures are \
                 judged by pHash alone, which takes distinct low-texture pictures for copies"
            );
        }
        let u64_ = |r: &mut BufReader<std::fs::File>| -> Result<u64> {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).with_context(ctx)?;
            Ok(u64::from_le_bytes(b))
        };
        let mut idx = DedupIndex::new();
        let n = u64_(&mut r)?;
        for _ in 0..n {
            let mut l = [0u8; 4];
            r.read_exact(&mut l).with_context(ctx)?;
            let mut k = vec![0u8; u32::from_le_bytes(l) as usize];
            r.read_exact(&mut k).with_context(ctx)?;
            idx.keys
                .push(String::from_utf8(k).with_context(ctx)?.into());
        }
        let read_id = |r: &mut BufReader<std::fs::File>| -> Result<u32> {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).with_context(ctx)?;
            let id = u32::from_le_bytes(b);
            if u64::from(id) >= n {
                bail!("{}", ctx());
            }
            Ok(id)
        };
        for _ in 0..u64_(&mut r)? {
            let u = u64_(&mut r)?;
            let id = read_id(&mut r)?;
            let t = u64_(&mut r)?;
            idx.urls.insert(u, (id, t));
        }
        for _ in 0..u64_(&mut r)? {
            let s = u64_(&mut r)?;
            let p = u64_(&mut r)?;
            let id = read_id(&mut r)?;
            let thumb = if thumbs {
                read_thumb(&mut r).with_context(ctx)?
            } else {
                None
            };
            idx.sha.insert(s, id);
            idx.insert_phash(p, thumb, id);
        }
        Ok(idx)
    }
}

/// A thumbnail as [`DedupIndex::save`] writes it: a flag byte, then the thumbnail if it is 1.
fn read_thumb(r: &mut impl Read) -> std::io::Result<Option<Thumb>> {
    let mut flag = [0u8; 1];
    r.read_exact(&mut flag)?;
    if flag[0] == 0 {
        return Ok(None);
    }
    let mut t = [0u8; Thumb::BYTES];
    r.read_exact(&mut t)?;
    Ok(Some(Thumb(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(s: &str) -> [u8; 32] {
        Sha256::digest(s.as_bytes()).into()
    }

    /// A fingerprint with a flat grey thumbnail of level `grey`.
    fn fp(hash: u64, mirror: u64) -> Fingerprint {
        grey(hash, mirror, 128)
    }

    fn grey(hash: u64, mirror: u64, level: u8) -> Fingerprint {
        Fingerprint {
            hash,
            mirror,
            thumb: Thumb([level; Thumb::BYTES]),
        }
    }

    #[test]
    fn neighbours_cover_the_radius() {
        let mut out = Vec::new();
        neighbours(0, 1, &mut out);
        assert_eq!(out.len(), 17);
        neighbours(0xFFFF, 2, &mut out);
        assert_eq!(out.len(), 1 + 16 + 120);
        out.sort_unstable();
        out.dedup();
        assert_eq!(out.len(), 137);
    }

    #[test]
    fn finds_every_hash_within_the_distance() {
        let mut idx = DedupIndex::new();
        let mut rng = fastrand::Rng::with_seed(7);
        let stored: Vec<u64> = (0..20_000u64)
            .map(|i| {
                // splitmix64: distinct inputs give distinct, well-spread outputs.
                let mut z = i.wrapping_add(1).wrapping_mul(0x9E3779B97F4A7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
                z ^ (z >> 31)
            })
            .collect();
        for (i, &h) in stored.iter().enumerate() {
            assert!(idx
                .check_content(
                    &sha(&i.to_string()),
                    Some(&fp(h, !h)),
                    None,
                    &format!("k{i}")
                )
                .is_none());
        }
        for d in [0u32, 3, 6, 8, 10] {
            for (i, &h) in stored.iter().enumerate().take(300) {
                let mut q = h;
                let mut flipped = 0;
                while flipped < d {
                    let b = 1u64 << rng.u32(0..64);
                    if (q ^ h) & b == 0 {
                        q ^= b;
                        flipped += 1;
                    }
                }
                let (dist, id) = idx.nearest(&fp(q, q), d).expect("within distance");
                assert!(dist <= d);
                if dist == d {
                    assert_eq!(idx.key(id), format!("k{i}"));
                }
            }
        }
    }

    #[test]
    fn urls_bytes_and_pictures_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = DedupIndex::new();
        assert_eq!(idx.check_url("http://a/1.jpg", "a cat", "000"), None);
        assert_eq!(
            idx.check_url("http://a/1.jpg", "a cat", "001"),
            Some(("000".into(), DupKind::UrlAndText))
        );
        assert_eq!(
            idx.check_url("http://a/1.jpg", "a dog", "002"),
            Some(("000".into(), DupKind::Url))
        );
        assert_eq!(
            idx.check_content(&sha("x"), Some(&fp(0xF0F0, 0x0F0F)), Some(4), "000"),
            None
        );
        assert_eq!(
            idx.check_content(&sha("x"), Some(&fp(0, 0)), Some(4), "003"),
            Some(("000".into(), DupKind::Exact))
        );
        assert_eq!(
            idx.check_content(&sha("y"), Some(&fp(0xF0F1, 1)), Some(4), "004"),
            Some(("000".into(), DupKind::Near(1)))
        );
        assert_eq!(
            idx.check_content(&sha("z"), Some(&fp(1, 0xF0F0)), Some(4), "005"),
            Some(("000".into(), DupKind::Near(0)))
        );
        assert_eq!(
            idx.check_content(&sha("w"), Some(&fp(u64::MAX, u64::MAX)), Some(4), "006"),
            None
        );

        let path = dir.path().join(INDEX_FILE);
        idx.save(&path, "ds@1/").unwrap();
        let mut back = DedupIndex::load(&path).unwrap();
        assert_eq!(back.len(), idx.len());
        assert_eq!(
            back.check_url("http://a/1.jpg", "x", "n0"),
            Some(("ds@1/000".into(), DupKind::Url))
        );
        assert_eq!(
            back.check_content(&sha("w"), Some(&fp(5, 5)), None, "n1"),
            Some(("ds@1/006".into(), DupKind::Exact))
        );
        std::fs::write(&path, b"ALBEFDX2\x05").unwrap();
        assert!(DedupIndex::load(&path).is_err());
    }

    #[test]
    fn a_hash_match_is_a_copy_only_when_the_thumbnails_agree() {
        let mut idx = DedupIndex::new();
        assert_eq!(
            idx.check_content(&sha("a"), Some(&grey(7, 7, 100)), Some(4), "a"),
            None
        );
        // Another colour with the same hash: a distinct picture.
        assert_eq!(
            idx.check_content(&sha("b"), Some(&grey(7, 7, 160)), Some(4), "b"),
            None
        );
        // Within the tolerance of a re-encoded copy.
        assert_eq!(
            idx.check_content(&sha("c"), Some(&grey(7 ^ 1, u64::MAX, 102)), Some(4), "c"),
            Some(("a".into(), DupKind::Near(1)))
        );
        // One cell far off (a small object that differs) is a distinct picture too.
        let mut one_cell = grey(7, 7, 100);
        one_cell.thumb.0[..3].copy_from_slice(&[0, 0, 0]);
        assert_eq!(
            idx.check_content(&sha("d"), Some(&one_cell), Some(4), "d"),
            None
        );
        // The mirror's hash is checked against the mirrored thumbnail.
        let mut left = grey(0xF0, 0x0F, 100);
        left.thumb.0[..3].copy_from_slice(&[255, 255, 255]);
        assert_eq!(
            idx.check_content(&sha("e"), Some(&left), Some(4), "e"),
            None
        );
        let right = Fingerprint {
            hash: 0x0F,
            mirror: 0xF0,
            thumb: left.thumb.mirrored(),
        };
        assert_eq!(
            idx.check_content(&sha("f"), Some(&right), Some(4), "f"),
            Some(("e".into(), DupKind::Near(0)))
        );
    }

    #[test]
    fn thumbnails_persist_and_format_1_indexes_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INDEX_FILE);
        let mut idx = DedupIndex::new();
        idx.check_content(&sha("a"), Some(&grey(7, 7, 100)), Some(4), "a");
        idx.save(&path, "ds@1/").unwrap();
        let mut back = DedupIndex::load(&path).unwrap();
        assert_eq!(
            back.check_content(&sha("b"), Some(&grey(7, 7, 160)), Some(4), "b"),
            None
        );

        // Format 1: keys, URLs, then (sha, pHash, key id) without thumbnails.
        let mut v1 = b"ALBEFDX1".to_vec();
        v1.extend(1u64.to_le_bytes());
        v1.extend(1u32.to_le_bytes());
        v1.extend(b"k");
        v1.extend(0u64.to_le_bytes());
        v1.extend(1u64.to_le_bytes());
        v1.extend(sha("k")[..8].to_vec());
        v1.extend(7u64.to_le_bytes());
        v1.extend(0u32.to_le_bytes());
        std::fs::write(&path, v1).unwrap();
        let mut old = DedupIndex::load(&path).unwrap();
        assert_eq!(old.len(), (0, 1, 1));
        assert_eq!(
            old.check_content(&sha("x"), Some(&grey(7, 7, 160)), Some(4), "x"),
            Some(("k".into(), DupKind::Near(0))),
            "judged by its pHash alone, as when it was written"
        );
    }

    #[test]
    fn pictures_without_a_hash_are_never_near_duplicates() {
        let mut idx = DedupIndex::new();
        for key in ["a", "b"] {
            assert_eq!(idx.check_content(&sha(key), None, Some(64), key), None);
        }
        // Nor is a hashed picture a near duplicate of them (distance 64 matches any hash).
        assert_eq!(
            idx.check_content(&sha("c"), Some(&fp(0, 0)), Some(64), "c"),
            None
        );
        assert_eq!(
            idx.check_content(&sha("a"), None, Some(64), "a2"),
            Some(("a".into(), DupKind::Exact)),
            "exact dedupe still applies"
        );
    }

    #[test]
    fn existing_rows_use_the_same_sha_key() {
        let mut idx = DedupIndex::new();
        let digest = sha("bytes");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        idx.add_existing(
            "000",
            Some("http://a/1.jpg"),
            "t",
            Some((&hex, 42, fp(42, 42).thumb)),
        );
        assert_eq!(
            idx.check_content(&digest, Some(&fp(999, 999)), None, "001"),
            Some(("000".into(), DupKind::Exact))
        );
    }
}
