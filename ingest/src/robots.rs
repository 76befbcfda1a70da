//! robots.txt (RFC 9309) for `--respect-robots-txt`. A group applies when one of its
//! `User-agent` product tokens equals one of ours (case-insensitive; `*` when none does, and
//! every group naming us counts); rules match the path and query of the URL after both are
//! percent-normalised; the longest matching rule wins and `Allow` wins a tie; `*` and a final
//! `$` are wildcards. How the server's answer is read (a 4xx: no rules; a 5xx or none:
//! nothing may be fetched; only the first [`MAX_ROBOTS_BYTES`]) is in `fetch.rs`.

/// How much of a robots.txt is parsed (RFC 9309 section 2.5: at least 500 KiB).
pub const MAX_ROBOTS_BYTES: usize = 500 << 10;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Robots {
    /// (allow, normalised pattern) of the groups that apply to us.
    rules: Vec<(bool, String)>,
}

/// The rules and agents of one group while it is read.
#[derive(Default)]
struct Group {
    agents: Vec<String>,
    rules: Vec<(bool, String)>,
}

impl Robots {
    /// Parses robots.txt for a crawler whose product tokens are `agents` (e.g. the operator's
    /// token and `albef-ingest`).
    pub fn parse(text: &str, agents: &[&str]) -> Robots {
        let agents: Vec<String> = agents.iter().map(|a| a.to_ascii_lowercase()).collect();
        let (mut ours, mut star, mut named_us) = (Vec::new(), Vec::new(), false);
        for group in groups(text) {
            if group.agents.iter().any(|g| agents.contains(g)) {
                named_us = true;
                ours.extend(group.rules.iter().cloned());
            }
            if group.agents.iter().any(|g| g == "*") {
                star.extend(group.rules);
            }
        }
        Robots {
            rules: if named_us { ours } else { star },
        }
    }

    /// Whether `path_and_query` (as in `/a/b.jpg?x=1`) may be fetched.
    pub fn allowed(&self, path_and_query: &str) -> bool {
        let target = normalise(path_and_query);
        if target == "/robots.txt" {
            return true;
        }
        let mut best: Option<(usize, bool)> = None;
        for (allow, pattern) in &self.rules {
            if matches(pattern, &target) {
                let len = pattern.len();
                best = match best {
                    Some((l, a)) if l > len || (l == len && a) => Some((l, a)),
                    _ => Some((len, *allow)),
                };
            }
        }
        best.is_none_or(|(_, allow)| allow)
    }
}

/// The groups of a robots.txt: consecutive `User-agent` lines, then their rules.
fn groups(text: &str) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut in_rules = false;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        let (field, value) = (field.trim().to_ascii_lowercase(), value.trim());
        match field.as_str() {
            "user-agent" => {
                if in_rules || out.is_empty() {
                    out.push(Group::default());
                    in_rules = false;
                }
                if let Some(token) = product_token(value) {
                    out.last_mut().expect("pushed").agents.push(token);
                }
            }
            "allow" | "disallow" if !out.is_empty() => {
                in_rules = true;
                if !value.is_empty() {
                    let rule = (field == "allow", normalise(value));
                    out.last_mut().expect("non-empty").rules.push(rule);
                }
            }
            _ => {}
        }
    }
    out
}

/// The product token of a `User-agent` value (`AcmeBot/1.2` -> `acmebot`); `*` stays `*`; an
/// empty value names no one.
fn product_token(value: &str) -> Option<String> {
    if value.starts_with('*') {
        return Some("*".into());
    }
    let token: String = value
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    (!token.is_empty()).then(|| token.to_ascii_lowercase())
}

/// Percent-normalises a path, pattern or path and query (RFC 9309 section 2.2.2): escapes of
/// unreserved characters are decoded, other escapes upper-cased, and octets outside printable
/// ASCII escaped, so `/%7Ea` and `/~a`, `/%c3%a9` and `/é` compare equal.
fn normalise(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escape = (b == b'%' && i + 2 < bytes.len())
            .then(|| hex_pair(bytes[i + 1], bytes[i + 2]))
            .flatten();
        match escape {
            Some(v) if is_unreserved(v) => {
                out.push(v as char);
                i += 3;
            }
            Some(v) => {
                out.push_str(&format!("%{v:02X}"));
                i += 3;
            }
            None if b.is_ascii_graphic() => {
                out.push(b as char);
                i += 1;
            }
            None => {
                out.push_str(&format!("%{b:02X}"));
                i += 1;
            }
        }
    }
    out
}

fn hex_pair(hi: u8, lo: u8) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    Some(digit(hi)? << 4 | digit(lo)?)
}

/// RFC 3986's unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Robots pattern match: a prefix match with `*` for any run and a final `$` for the end.
fn matches(pattern: &str, path: &str) -> bool {
    let (pattern, anchored) = match pattern.strip_suffix('$') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let parts: Vec<&str> = pattern.split('*').collect();
    let Some(mut rest) = path.strip_prefix(parts[0]) else {
        return false;
    };
    let Some((last, middle)) = parts[1..].split_last() else {
        return !anchored || rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    if anchored {
        rest.ends_with(last)
    } else {
        rest.contains(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXT: &str = "User-agent: *\nDisallow: /private/\nAllow: /private/ok.jpg\n\n\
                       User-agent: AcmeBot\nUser-agent: other\nDisallow: /\nAllow: /public/*.jpg$\n";

    #[test]
    fn star_group_applies_to_unnamed_agents() {
        let r = Robots::parse(TXT, &["somebot"]);
        assert!(r.allowed("/a.jpg"));
        assert!(!r.allowed("/private/x.jpg"));
        assert!(r.allowed("/private/ok.jpg"));
    }

    #[test]
    fn named_group_overrides_star() {
        let r = Robots::parse(TXT, &["acmebot"]);
        assert!(!r.allowed("/a.jpg"));
        assert!(r.allowed("/public/cat.jpg"));
        assert!(!r.allowed("/public/cat.jpg.html"));
    }

    #[test]
    fn empty_robots_allows_all() {
        assert!(Robots::parse("", &["x"]).allowed("/anything"));
        assert!(Robots::parse("User-agent: *\nDisallow:\n", &["x"]).allowed("/anything"));
    }

    /// A group applies to the agent it names, not to every agent whose name contains it, and an
    /// empty `User-agent` names no one.
    #[test]
    fn agents_match_by_whole_product_token() {
        let txt = "User-agent: a\nDisallow: /\n\nUser-agent:\nDisallow: /\n";
        assert!(Robots::parse(txt, &["albef-ingest"]).allowed("/x.jpg"));
        assert!(!Robots::parse(txt, &["a"]).allowed("/x.jpg"));
        let versioned = "User-agent: Albef-Ingest/2.0\nDisallow: /\n";
        assert!(!Robots::parse(versioned, &["albef-ingest"]).allowed("/x.jpg"));
    }

    /// Every group naming us counts (RFC 9309 section 2.2.1: groups for one agent merge).
    #[test]
    fn groups_naming_us_merge() {
        let txt = "User-agent: acme\nDisallow: /a\n\nUser-agent: *\nDisallow: /c\n\n\
                   User-agent: acme\nDisallow: /b\n";
        let r = Robots::parse(txt, &["acme"]);
        assert!(!r.allowed("/a") && !r.allowed("/b") && r.allowed("/c"));
    }

    /// Rules match the query too: `/*?x` blocks `?x` URLs only.
    #[test]
    fn rules_see_the_query() {
        let r = Robots::parse("User-agent: *\nDisallow: /*?x\n", &["any"]);
        assert!(!r.allowed("/img.jpg?x=1"));
        assert!(r.allowed("/img.jpg"));
        assert!(r.allowed("/img.jpg?y=1"));
        let end = Robots::parse("User-agent: *\nDisallow: /*.jpg$\n", &["any"]);
        assert!(end.allowed("/a.jpg?size=2"));
        assert!(!end.allowed("/a.jpg"));
    }

    /// RFC 9309 section 2.2.2's encoding examples: escapes of unreserved octets and UTF-8 in
    /// patterns compare equal to their other spelling.
    #[test]
    fn percent_encoding_is_normalised() {
        let r = Robots::parse("User-agent: *\nDisallow: /foo/bar?baz=quz\n", &["any"]);
        assert!(!r.allowed("/foo/bar?baz=quz"));
        let tilde = Robots::parse("User-agent: *\nDisallow: /~joe/\n", &["any"]);
        assert!(!tilde.allowed("/%7Ejoe/index.html"));
        let utf8 = Robots::parse("User-agent: *\nDisallow: /foo/bar/ツ\n", &["any"]);
        assert!(!utf8.allowed("/foo/bar/%E3%83%84"));
        assert!(!utf8.allowed("/foo/bar/%e3%83%84"));
        let escaped = Robots::parse("User-agent: *\nDisallow: /foo/bar/%E3%83%84\n", &["any"]);
        assert!(!escaped.allowed("/foo/bar/%E3%83%84"));
        let slash = Robots::parse("User-agent: *\nDisallow: /a%2Fb\n", &["any"]);
        assert!(
            slash.allowed("/a/b"),
            "an escaped reserved octet stays escaped"
        );
    }

    /// RFC 9309 section 2.2.2: the longest match wins, `Allow` wins a tie; robots.txt itself is
    /// always allowed.
    #[test]
    fn longest_match_and_ties() {
        let r = Robots::parse(
            "User-agent: *\nAllow: /example/page/\nDisallow: /example/page/disallowed.gif\n\
             Disallow: /tie\nAllow: /tie\nDisallow: /\n",
            &["any"],
        );
        assert!(r.allowed("/example/page/"));
        assert!(!r.allowed("/example/page/disallowed.gif"));
        assert!(r.allowed("/tie"));
        assert!(!r.allowed("/other"));
        assert!(r.allowed("/robots.txt"));
    }
}
