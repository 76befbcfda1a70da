//! Canonical URLs, the first dedupe layer: two spellings of one address (case of scheme and
//! host, default port, fragment, order of query parameters, tracking parameters) fetch once.
//! The canonical form is only a key: what is fetched is the URL as listed ([`listed`]), since
//! signed links (CDN tokens, presigned object-store URLs) break when their query is rewritten.
use anyhow::{bail, Context, Result};
use url::Url;

/// Query parameters that only track the click and never change the resource.
fn is_tracking(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("utm_")
        || matches!(
            n.as_str(),
            "fbclid"
                | "gclid"
                | "dclid"
                | "gbraid"
                | "wbraid"
                | "msclkid"
                | "yclid"
                | "igshid"
                | "mc_cid"
                | "mc_eid"
                | "_ga"
                | "_gl"
                | "ref_src"
        )
}

/// Parses an input URL (http or https only) as it is listed: the URL that is fetched. Only
/// what any HTTP client does to it changes (host case, default port, escaping of characters a
/// URL cannot hold); the fragment, which is never sent, is dropped.
pub fn listed(raw: &str) -> Result<Url> {
    let raw = raw.trim();
    if raw.is_empty() {
        bail!("empty URL");
    }
    let mut url = Url::parse(raw).with_context(|| format!("malformed URL {raw:?}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("unsupported URL scheme {:?} in {raw:?}", url.scheme());
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("URL without a host: {raw:?}");
    }
    url.set_fragment(None);
    Ok(url)
}

/// The canonical form of a listed URL: the key URL duplicates are found by.
pub fn canonical(raw: &str) -> Result<Url> {
    let mut url = listed(raw)?;
    if url.query().is_some() {
        let mut pairs: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !is_tracking(k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        pairs.sort();
        if pairs.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_address_agree() {
        let a = canonical("HTTP://Example.COM:80/a/b.jpg?b=2&a=1&utm_source=x#frag").unwrap();
        let b = canonical("http://example.com/a/b.jpg?a=1&b=2&fbclid=zzz").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "http://example.com/a/b.jpg?a=1&b=2");
        assert_eq!(
            canonical("https://x.org:443/i.png?utm_medium=m")
                .unwrap()
                .as_str(),
            "https://x.org/i.png"
        );
    }

    /// The listed URL keeps its query as written: order, repeated keys, `%20`, `~`, a bare flag.
    #[test]
    fn listed_keeps_the_query_as_written() {
        let raw = "https://cdn.example.com/i.jpg?b=2&a=1&a=0&sig=x%20y~z&flag&utm_source=s#f";
        let url = listed(raw).unwrap();
        assert_eq!(
            url.as_str(),
            "https://cdn.example.com/i.jpg?b=2&a=1&a=0&sig=x%20y~z&flag&utm_source=s"
        );
        assert_ne!(canonical(raw).unwrap(), url);
    }

    #[test]
    fn different_addresses_differ() {
        assert_ne!(
            canonical("http://example.com/a.jpg?size=1").unwrap(),
            canonical("http://example.com/a.jpg?size=2").unwrap()
        );
        assert_ne!(
            canonical("http://example.com/A.jpg").unwrap(),
            canonical("http://example.com/a.jpg").unwrap()
        );
    }

    #[test]
    fn refuses_what_cannot_be_fetched() {
        for bad in [
            "",
            "not a url",
            "ftp://x.org/a.jpg",
            "http://",
            "data:image/png;base64,AAAA",
        ] {
            assert!(canonical(bad).is_err(), "{bad:?} accepted");
        }
    }
}
