//! The downloader stage: polite, bounded HTTP fetching. Per-host concurrency and rate limits,
//! 429 and 503 pause the whole host (for their Retry-After, in seconds or as an HTTP date, or
//! for the backoff delay when there is none), retries with exponential backoff and jitter for
//! transient failures only (timeouts, connection errors, 408, 429, 5xx), a body size limit
//! enforced while streaming, X-Robots-Tag opt-outs checked before the body is read, and
//! robots.txt when asked. Hosts are keyed by host name (http and https to one server share
//! its limits); a host's entry is forgotten once idle when more than [`MAX_IDLE_HOSTS`] are
//! known, so memory does not grow with the number of hosts in a list.
use crate::robots::{Robots, MAX_ROBOTS_BYTES};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, RETRY_AFTER, USER_AGENT};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, Semaphore};
use url::Url;

/// How to fetch.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Whole-request limit per attempt (connect, headers and body).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra attempts after the first for transient failures.
    pub retries: u32,
    /// First backoff delay; doubles per retry, with full jitter.
    pub backoff: Duration,
    /// Longest Retry-After we wait for; a longer one fails the row.
    pub max_retry_after: Duration,
    pub max_body_bytes: u64,
    pub per_host_concurrency: usize,
    /// Requests per second per host; 0 means unlimited.
    pub per_host_rate: f64,
    /// Appended to the User-Agent and matched against `agent: directives` in X-Robots-Tag.
    pub user_agent_token: Option<String>,
    /// X-Robots-Tag directives that mean "do not use" (empty: ignore the header).
    pub disallowed_directives: Vec<String>,
    pub respect_robots_txt: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retries: 2,
            backoff: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(60),
            max_body_bytes: 32 << 20,
            per_host_concurrency: 16,
            per_host_rate: 0.0,
            user_agent_token: None,
            disallowed_directives: ["noai", "noimageai", "noindex", "noimageindex"]
                .map(String::from)
                .to_vec(),
            respect_robots_txt: false,
        }
    }
}

/// Why a fetch did not give bytes. `kind` is a short stable label for the stats.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchError {
    pub kind: &'static str,
    pub message: String,
    pub http_status: Option<u16>,
    /// True when the site opted out (X-Robots-Tag or robots.txt): status `opted_out`.
    pub opted_out: bool,
}

#[derive(Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub http_status: u16,
    /// Attempts used (1 = no retry).
    pub attempts: u32,
}

/// Idle hosts kept before the map is swept (a sweep drops hosts with no request in flight and
/// no pause pending).
pub const MAX_IDLE_HOSTS: usize = 4096;

struct Host {
    slots: Semaphore,
    /// The earliest moment the next request may start (rate limit and Retry-After).
    next_start: Mutex<Instant>,
    /// robots.txt per origin (`scheme://host:port`), read once each.
    robots: Mutex<HashMap<String, Arc<OnceCell<RobotsAnswer>>>>,
}

/// A robots.txt as read, or why it could not be (then nothing may be fetched from its origin).
type RobotsAnswer = Result<Robots, String>;

/// The hosts seen, and the size at which the map is next swept.
struct Hosts {
    map: HashMap<String, Arc<Host>>,
    sweep_at: usize,
}

pub struct Fetcher {
    client: reqwest::Client,
    cfg: FetchConfig,
    user_agent: String,
    hosts: Mutex<Hosts>,
}

/// The User-Agent: names the tool and, when given, the operator's token.
pub fn user_agent(token: Option<&str>) -> String {
    let base = format!(
        "albef-ingest/{} (+https://github.com/albef/albef)",
        env!("CARGO_PKG_VERSION")
    );
    match token {
        Some(t) => format!("{base} (compatible; {t})"),
        None => base,
    }
}

/// True when the X-Robots-Tag header values forbid use, for us (`token`) or for every agent.
pub fn robots_tag_forbids(values: &[&str], token: Option<&str>, disallowed: &[String]) -> bool {
    values.iter().any(|value| {
        // "agent: d1, d2" applies to that agent only; a bare list applies to all.
        let (agent, directives) = match value.split_once(':') {
            Some((a, d)) if !a.contains(',') && !a.trim().contains(' ') => (Some(a.trim()), d),
            _ => (None, *value),
        };
        let applies = match agent {
            None => true,
            Some(a) => token.is_some_and(|t| a.eq_ignore_ascii_case(t)),
        };
        applies
            && directives
                .split(',')
                .map(str::trim)
                .any(|d| disallowed.iter().any(|x| x.eq_ignore_ascii_case(d)))
    })
}

/// Retry-After as seconds or as an HTTP date (RFC 9110 section 10.2.3); a date in the past
/// means now.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
    Some(Duration::from_millis(ms.max(0) as u64))
}

enum Attempt {
    Done(Fetched),
    /// A transient failure: retry after at least this long (`None`: the usual backoff).
    Transient(FetchError, Option<Duration>),
    Fatal(FetchError),
}

fn err(kind: &'static str, message: impl Into<String>, http_status: Option<u16>) -> FetchError {
    FetchError {
        kind,
        message: message.into(),
        http_status,
        opted_out: false,
    }
}

fn classify(e: &reqwest::Error) -> (&'static str, bool) {
    if e.is_timeout() {
        ("timeout", true)
    } else if e.is_redirect() {
        ("too_many_redirects", false)
    } else if e.is_connect() {
        ("connect", true)
    } else if e.is_body() || e.is_request() || e.is_decode() {
        ("connection", true)
    } else {
        ("http", false)
    }
}

/// A failed request or body read, as `classify` tells: transient (retried) or fatal.
fn failed(e: &reqwest::Error, message: String, http_status: Option<u16>) -> Attempt {
    let (kind, transient) = classify(e);
    let e = err(kind, message, http_status);
    if transient {
        Attempt::Transient(e, None)
    } else {
        Attempt::Fatal(e)
    }
}

impl Fetcher {
    pub fn new(cfg: FetchConfig) -> anyhow::Result<Fetcher> {
        let user_agent = user_agent(cfg.user_agent_token.as_deref());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(5))
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .pool_max_idle_per_host(cfg.per_host_concurrency.max(1))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(Fetcher {
            client,
            cfg,
            user_agent,
            hosts: Mutex::new(Hosts {
                map: HashMap::new(),
                sweep_at: MAX_IDLE_HOSTS,
            }),
        })
    }

    /// The state of `url`'s host, made at its first request.
    fn host(&self, url: &Url) -> Arc<Host> {
        let key = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let mut hosts = self.hosts.lock().expect("hosts lock");
        if let Some(h) = hosts.map.get(&key) {
            return h.clone();
        }
        if hosts.map.len() >= hosts.sweep_at {
            let now = Instant::now();
            hosts.map.retain(|_, h| {
                Arc::strong_count(h) > 1 || *h.next_start.lock().expect("host lock") > now
            });
            // Busy hosts stay; sweep again only when the map has grown as much again.
            hosts.sweep_at = MAX_IDLE_HOSTS.max(2 * hosts.map.len());
        }
        let host = Arc::new(Host {
            slots: Semaphore::new(self.cfg.per_host_concurrency.max(1)),
            next_start: Mutex::new(Instant::now()),
            robots: Mutex::new(HashMap::new()),
        });
        hosts.map.insert(key, host.clone());
        host
    }

    /// How many hosts are tracked now.
    pub fn hosts_tracked(&self) -> usize {
        self.hosts.lock().expect("hosts lock").map.len()
    }

    /// Waits for the host's rate limit; returns when this request may start.
    async fn pace(&self, host: &Host) {
        let wait = {
            let mut next = host.next_start.lock().expect("host lock");
            let now = Instant::now();
            let start = (*next).max(now);
            if self.cfg.per_host_rate > 0.0 {
                *next = start + Duration::from_secs_f64(1.0 / self.cfg.per_host_rate);
            }
            start - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    fn hold_host(host: &Host, pause: Duration) {
        let mut next = host.next_start.lock().expect("host lock");
        *next = (*next).max(Instant::now() + pause);
    }

    /// Fetches `url` with retries. Never panics on bad input; every failure is a `FetchError`.
    pub async fn fetch(&self, url: &Url) -> Result<Fetched, FetchError> {
        let host = self.host(url);
        if self.cfg.respect_robots_txt {
            self.check_robots(&host, url).await?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = {
                let _slot = host
                    .slots
                    .acquire()
                    .await
                    .expect("host semaphore never closes");
                self.pace(&host).await;
                self.attempt(url).await
            };
            match outcome {
                Attempt::Done(mut f) => {
                    f.attempts = attempt;
                    return Ok(f);
                }
                Attempt::Fatal(e) => return Err(e),
                Attempt::Transient(e, after) => {
                    let base = self.cfg.backoff.mul_f64(2f64.powi(attempt as i32 - 1));
                    // A host that says it is overloaded waits as a whole, whether or not this
                    // row tries again: for its Retry-After (at most `max_retry_after`), else
                    // (429 or 503 without one) for the backoff delay.
                    let overloaded = matches!(e.http_status, Some(429 | 503));
                    let pause = after.or(overloaded.then_some(base));
                    if let Some(pause) = pause {
                        Self::hold_host(&host, pause.min(self.cfg.max_retry_after));
                    }
                    if attempt > self.cfg.retries {
                        return Err(e);
                    }
                    if let Some(pause) = pause.filter(|p| *p > self.cfg.max_retry_after) {
                        let message = format!(
                            "{} (Retry-After {}s is too long)",
                            e.message,
                            pause.as_secs()
                        );
                        return Err(FetchError { message, ..e });
                    }
                    let jittered = base.mul_f64(fastrand::f64());
                    tokio::time::sleep(jittered.max(pause.unwrap_or_default())).await;
                }
            }
        }
    }

    /// A GET of `url` with our User-Agent.
    fn request(&self, url: &Url) -> reqwest::RequestBuilder {
        self.client
            .get(url.clone())
            .header(USER_AGENT, &self.user_agent)
    }

    /// One request: sends it, classifies the response, and streams the body within the limit.
    async fn attempt(&self, url: &Url) -> Attempt {
        let send = self.request(url).send();
        // reqwest's timeout covers the body too; this outer one also bounds a stalled DNS lookup.
        let budget = self.cfg.timeout + Duration::from_millis(200);
        let started = Instant::now();
        let resp = match tokio::time::timeout(budget, send).await {
            Err(_) => return Attempt::Transient(err("timeout", "request timed out", None), None),
            Ok(Err(e)) => {
                return failed(&e, format!("{e}"), e.status().map(|s| s.as_u16()));
            }
            Ok(Ok(r)) => r,
        };
        let declared = match self.classify_response(&resp) {
            Ok(declared) => declared,
            Err(ended) => return ended,
        };
        self.read_body(resp, declared, started + budget).await
    }

    /// Whether a response's body is worth reading: `Ok` with its declared length when it is,
    /// else how the attempt ends (HTTP errors, an opt-out by X-Robots-Tag, a body declared
    /// larger than the limit).
    fn classify_response(&self, resp: &reqwest::Response) -> Result<Option<u64>, Attempt> {
        let status = resp.status().as_u16();
        if status == 429 || status == 408 {
            let after = retry_after(resp.headers());
            let (kind, what) = if status == 429 {
                ("http_429", "Too Many Requests")
            } else {
                ("http_408", "Request Timeout")
            };
            return Err(Attempt::Transient(
                err(kind, format!("HTTP {status} {what}"), Some(status)),
                after,
            ));
        }
        if resp.status().is_server_error() {
            let after = retry_after(resp.headers());
            return Err(Attempt::Transient(
                err("http_5xx", format!("HTTP {status}"), Some(status)),
                after,
            ));
        }
        if !resp.status().is_success() {
            return Err(Attempt::Fatal(err(
                "http_4xx",
                format!("HTTP {status}"),
                Some(status),
            )));
        }
        self.check_robots_tag(resp.headers(), status)?;
        let declared = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = self.cfg.max_body_bytes;
        if declared.is_some_and(|n| n > limit) {
            return Err(Attempt::Fatal(err(
                "too_large",
                format!(
                    "body of {} bytes exceeds the limit of {limit}",
                    declared.unwrap_or(0)
                ),
                Some(status),
            )));
        }
        Ok(declared)
    }

    /// Ends the attempt as an opt-out when the X-Robots-Tag headers forbid use.
    fn check_robots_tag(&self, headers: &HeaderMap, status: u16) -> Result<(), Attempt> {
        let tags: Vec<&str> = headers
            .get_all("x-robots-tag")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if robots_tag_forbids(
            &tags,
            self.cfg.user_agent_token.as_deref(),
            &self.cfg.disallowed_directives,
        ) {
            return Err(Attempt::Fatal(FetchError {
                opted_out: true,
                ..err(
                    "x_robots_tag",
                    format!("use disallowed by X-Robots-Tag: {}", tags.join("; ")),
                    Some(status),
                )
            }));
        }
        Ok(())
    }

    /// Streams the body until `deadline`, failing as soon as it grows past the size limit.
    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        declared: Option<u64>,
        deadline: Instant,
    ) -> Attempt {
        let status = resp.status().as_u16();
        let limit = self.cfg.max_body_bytes;
        let mut bytes = Vec::with_capacity(declared.unwrap_or(64 << 10).min(limit) as usize);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, resp.chunk()).await {
                Err(_) => {
                    return Attempt::Transient(
                        err("timeout", "body read timed out", Some(status)),
                        None,
                    )
                }
                Ok(Err(e)) => return failed(&e, format!("reading the body: {e}"), Some(status)),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => {
                    if bytes.len() as u64 + chunk.len() as u64 > limit {
                        return Attempt::Fatal(err(
                            "too_large",
                            format!("body exceeds the limit of {limit} bytes"),
                            Some(status),
                        ));
                    }
                    bytes.extend_from_slice(&chunk);
                }
            }
        }
        Attempt::Done(Fetched {
            bytes,
            http_status: status,
            attempts: 1,
        })
    }

    /// Fails with an opt-out when `url`'s robots.txt (read once per origin) disallows it.
    async fn check_robots(&self, host: &Host, url: &Url) -> Result<(), FetchError> {
        let origin = url.origin().ascii_serialization();
        let cell = host
            .robots
            .lock()
            .expect("robots lock")
            .entry(origin)
            .or_default()
            .clone();
        let robots = match cell.get_or_init(|| self.load_robots(url)).await {
            Ok(robots) => robots,
            Err(why) => {
                let message = format!("robots.txt unreachable ({why}): RFC 9309 disallows all");
                return Err(err("robots_txt_unreachable", message, None));
            }
        };
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        if robots.allowed(&target) {
            return Ok(());
        }
        Err(FetchError {
            opted_out: true,
            ..err("robots_txt", "disallowed by robots.txt", None)
        })
    }

    /// robots.txt of the URL's origin, as RFC 9309 section 2.3.1 reads the answer: a 4xx
    /// allows everything; a 5xx, a failed request or an unreadable body is unreachable
    /// (`Err`: everything disallowed); only the first [`MAX_ROBOTS_BYTES`] are parsed.
    async fn load_robots(&self, url: &Url) -> RobotsAnswer {
        let mut robots_url = url.clone();
        robots_url.set_path("/robots.txt");
        robots_url.set_query(None);
        let mut resp = self
            .request(&robots_url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if status.is_client_error() {
            return Ok(Robots::default());
        }
        if !status.is_success() {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        let mut body = Vec::new();
        while body.len() < MAX_ROBOTS_BYTES {
            match resp.chunk().await.map_err(|e| e.to_string())? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
        }
        body.truncate(MAX_ROBOTS_BYTES);
        let mut agents = vec!["albef-ingest"];
        agents.extend(self.cfg.user_agent_token.as_deref());
        Ok(Robots::parse(&String::from_utf8_lossy(&body), &agents))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dis() -> Vec<String> {
        FetchConfig::default().disallowed_directives
    }

    #[test]
    fn x_robots_tag_forms() {
        assert!(robots_tag_forbids(&["noai"], None, &dis()));
        assert!(robots_tag_forbids(
            &["nofollow, NoImageIndex"],
            None,
            &dis()
        ));
        assert!(!robots_tag_forbids(&["nofollow"], None, &dis()));
        assert!(robots_tag_forbids(&["mybot: noai"], Some("mybot"), &dis()));
        assert!(!robots_tag_forbids(
            &["otherbot: noai"],
            Some("mybot"),
            &dis()
        ));
        assert!(!robots_tag_forbids(&["otherbot: noai"], None, &dis()));
        assert!(!robots_tag_forbids(&["noai"], None, &[]));
    }

    #[test]
    fn user_agent_names_the_tool_and_token() {
        assert!(user_agent(None).starts_with("albef-ingest/"));
        assert!(user_agent(Some("acme-research")).contains("compatible; acme-research"));
    }
}
