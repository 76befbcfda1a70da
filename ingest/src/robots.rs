//! robots.txt (RFC 9309) for `--respect-robots-txt`: the group for our agent token (or `*`),
//! longest matching rule wins, `Allow` wins a tie, `*` and `$` wildcards.

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Robots {
    /// (allow, pattern) of the group that applies to us.
    rules: Vec<(bool, String)>,
}

impl Robots {
    /// Parses robots.txt and keeps the rules of the group naming `agent` (case-insensitive,
    /// by product token), or of `*` when no group names it.
    pub fn parse(text: &str, agent: &str) -> Robots {
        let agent = agent.to_ascii_lowercase();
        let mut ours: Vec<(bool, String)> = Vec::new();
        let mut star: Vec<(bool, String)> = Vec::new();
        let mut named_us = false;
        // The agents of the group being read, and whether its rules have started.
        let mut group: Vec<String> = Vec::new();
        let mut in_rules = false;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some((field, value)) = line.split_once(':') else {
                continue;
            };
            let (field, value) = (field.trim().to_ascii_lowercase(), value.trim());
            match field.as_str() {
                "user-agent" => {
                    if in_rules {
                        group.clear();
                        in_rules = false;
                    }
                    group.push(value.to_ascii_lowercase());
                }
                "allow" | "disallow" => {
                    in_rules = true;
                    if value.is_empty() {
                        continue;
                    }
                    let rule = (field == "allow", value.to_string());
                    if group.iter().any(|g| g != "*" && agent.contains(g.as_str())) {
                        named_us = true;
                        ours.push(rule.clone());
                    }
                    if group.iter().any(|g| g == "*") {
                        star.push(rule);
                    }
                }
                _ => {}
            }
        }
        Robots {
            rules: if named_us { ours } else { star },
        }
    }

    /// Whether `path` (with its query) may be fetched.
    pub fn allowed(&self, path: &str) -> bool {
        let mut best: Option<(usize, bool)> = None;
        for (allow, pattern) in &self.rules {
            if matches(pattern, path) {
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
        let r = Robots::parse(TXT, "somebot");
        assert!(r.allowed("/a.jpg"));
        assert!(!r.allowed("/private/x.jpg"));
        assert!(r.allowed("/private/ok.jpg"));
    }

    #[test]
    fn named_group_overrides_star() {
        let r = Robots::parse(TXT, "acmebot");
        assert!(!r.allowed("/a.jpg"));
        assert!(r.allowed("/public/cat.jpg"));
        assert!(!r.allowed("/public/cat.jpg.html"));
    }

    #[test]
    fn empty_robots_allows_all() {
        assert!(Robots::parse("", "x").allowed("/anything"));
        assert!(Robots::parse("User-agent: *\nDisallow:\n", "x").allowed("/anything"));
    }
}
