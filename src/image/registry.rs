//! A registry API v2 client: manifests (with index/platform resolution), streamed blobs,
//! the tag list with all its pages, and auth: anonymous, bearer tokens (with or without
//! credentials) and basic auth. Credentials come from `STRATAFS_REGISTRY_USER`/`_PASSWORD`
//! (DUCC's `DUCC_DOCKER_REGISTRY_USER`/`_PASS` also work), else from the usual credential
//! files (`$REGISTRY_AUTH_FILE`, containers' `auth.json`, `~/.docker/config.json`).

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use parking_lot::Mutex;
use serde::Deserialize;
use tracing::{debug, warn};
use ureq::Agent;
use ureq::http::Response;

use crate::image::Error as ImageError;
use crate::image::digest::Digest;
use crate::image::manifest::{Descriptor, MANIFEST_ACCEPT, Platform};
use crate::image::reference::ImageName;
use crate::image::source::{ImageSource, Resolved};

/// How hard to try a registry that misbehaves.
#[derive(Debug, Clone, Copy)]
pub struct Network {
    /// A blob whose bytes stop arriving for this long has stalled.
    pub idle_timeout: Duration,
    /// Retries of a transient failure (connection error, 5xx, 429, a stalled or cut blob).
    pub retries: u32,
    /// First wait before a retry; doubled each time (a 429's Retry-After wins).
    pub backoff: Duration,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            idle_timeout: Duration::from_secs(60),
            retries: 3,
            backoff: Duration::from_secs(1),
        }
    }
}

static NETWORK: OnceLock<Network> = OnceLock::new();

/// Set the network policy for this process (the command line does, once).
pub fn configure(n: Network) {
    let _ = NETWORK.set(n);
}

pub fn network() -> Network {
    NETWORK.get().copied().unwrap_or_default()
}

/// Whether an HTTP status is worth another try.
fn transient_status(status: u16) -> bool {
    status == 429 || status == 408 || (500..600).contains(&status)
}

/// The wait a 429/503 asks for (`Retry-After: SECONDS`), capped.
fn retry_after(resp: &Response<ureq::Body>) -> Option<Duration> {
    let v = resp.headers().get("retry-after")?.to_str().ok()?;
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(120)))
}

/// Pages of a tag list followed at most (10 million tags at the 1,000 a page we ask for).
const MAX_TAG_PAGES: usize = 10_000;

pub struct Registry {
    name: ImageName,
    base: String,
    agent: Agent,
    creds: Option<(String, String)>,
    /// The Authorization header that last worked (a bearer token or basic credentials).
    auth: Mutex<Option<String>>,
    /// Why the last body read of each blob failed in transit, for the retry decision.
    failures: Arc<Mutex<Vec<(Digest, String)>>>,
}

impl Registry {
    pub fn new(name: ImageName) -> Result<Registry, ImageError> {
        let scheme = if name.plain_http { "http" } else { "https" };
        let base = format!("{scheme}://{}", name.api_host());
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .user_agent(concat!("stratafs/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let creds = credentials(&name.registry);
        Ok(Registry {
            name,
            base,
            agent,
            creds,
            auth: Mutex::new(None),
            failures: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// `send`, again after a transient failure (connection error, 5xx, 429), a bounded
    /// number of times with doubling waits.
    fn with_retries(
        &self,
        url: &str,
        send: impl Fn() -> Result<Response<ureq::Body>, ImageError>,
    ) -> Result<Response<ureq::Body>, ImageError> {
        let net = network();
        let mut wait = net.backoff;
        let mut attempt = 0;
        loop {
            let r = send();
            let (again, hint) = match &r {
                Ok(resp) if transient_status(resp.status().as_u16()) => (true, retry_after(resp)),
                Ok(_) => (false, None),
                Err(ImageError::Http { .. }) => (true, None),
                Err(_) => (false, None),
            };
            if !again || attempt >= net.retries {
                return r;
            }
            attempt += 1;
            let pause = hint.unwrap_or(wait);
            let why = match &r {
                Ok(resp) => format!("HTTP {}", resp.status().as_u16()),
                Err(e) => e.to_string(),
            };
            warn!(%url, attempt, retries = net.retries, "{why}: retrying in {:.1} s", pause.as_secs_f64());
            std::thread::sleep(pause);
            wait = wait.saturating_mul(2);
        }
    }

    /// GET with auth: on a 401 the challenge is answered once and the request repeated.
    /// Credentials and tokens go only to the registry itself (and, in `answer`, to the token
    /// realm its own challenge names): an absolute URL elsewhere (a tag list's `Link`) is
    /// fetched without them, and its challenges are not answered.
    fn get(&self, path: &str, accept: &str) -> Result<Response<ureq::Body>, ImageError> {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let ours = same_origin(&url, &self.base);
        let send = |auth: Option<&str>| {
            let mut req = self.agent.get(&url).header("Accept", accept);
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req.call().map_err(|e| ImageError::Http {
                url: url.clone(),
                message: e.to_string(),
            })
        };
        let current = self.auth.lock().clone().filter(|_| ours);
        let resp = self.with_retries(&url, || send(current.as_deref()))?;
        if resp.status().as_u16() != 401 {
            return check(&url, resp);
        }
        if !ours {
            return Err(ImageError::Registry {
                url,
                status: 401,
                message: format!(
                    "credentials are only sent to the registry ({}), not to another host",
                    self.base
                ),
            });
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let auth = self.answer(&url, &challenge)?;
        let resp = self.with_retries(&url, || send(Some(&auth)))?;
        let resp = check(&url, resp)?;
        *self.auth.lock() = Some(auth);
        Ok(resp)
    }

    /// The Authorization header for a `WWW-Authenticate` challenge.
    fn answer(&self, url: &str, challenge: &str) -> Result<String, ImageError> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let params = parse_params(params);
        let basic = self.creds.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let denied = |why: &str| ImageError::Registry {
            url: url.to_string(),
            status: 401,
            message: why.to_string(),
        };
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => basic.ok_or_else(|| {
                denied("the registry wants credentials (set STRATAFS_REGISTRY_USER and STRATAFS_REGISTRY_PASSWORD, or log in with podman/docker)")
            }),
            "bearer" => {
                let realm = params
                    .iter()
                    .find(|(k, _)| k == "realm")
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| denied("bearer challenge without a realm"))?;
                let mut token_url = realm.clone();
                let mut sep = if realm.contains('?') { '&' } else { '?' };
                for (k, v) in &params {
                    if k == "service" || k == "scope" {
                        token_url.push_str(&format!("{sep}{k}={}", encode(v)));
                        sep = '&';
                    }
                }
                if !params.iter().any(|(k, _)| k == "scope") {
                    let scope = format!("repository:{}:pull", self.name.repository);
                    token_url.push_str(&format!("{sep}scope={}", encode(&scope)));
                }
                debug!(%token_url, "fetching a bearer token");
                let mut req = self.agent.get(&token_url);
                if let Some(b) = &basic {
                    req = req.header("Authorization", b);
                }
                let resp = req.call().map_err(|e| ImageError::Http {
                    url: token_url.clone(),
                    message: e.to_string(),
                })?;
                let mut resp = check(&token_url, resp)?;
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = resp
                    .body_mut()
                    .read_json_bytes()
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                    .map_err(|e| ImageError::format(token_url.clone(), e))?;
                t.token
                    .or(t.access_token)
                    .map(|t| format!("Bearer {t}"))
                    .ok_or_else(|| denied("the token service returned no token"))
            }
            _ => Err(denied(&format!("unsupported auth challenge '{challenge}'"))),
        }
    }

    fn manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>), ImageError> {
        let path = format!("/v2/{}/manifests/{reference}", self.name.repository);
        let mut resp = self.get(&path, MANIFEST_ACCEPT)?;
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string());
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_vec()
            .map_err(|e| ImageError::Http {
                url: format!("{}{path}", self.base),
                message: e.to_string(),
            })?;
        if let Ok(d) = Digest::parse(reference) {
            d.verify(&format!("{} manifest", self.name), &bytes)?;
        }
        Ok((bytes, ct))
    }

    /// Every tag of the repository, following the `Link` header through all pages.
    pub fn tags(&self) -> Result<Vec<String>, ImageError> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut next = Some(format!("/v2/{}/tags/list?n=1000", self.name.repository));
        // A registry whose `Link` leads back to a page already read, or on without end,
        // would keep us here forever.
        let mut seen = std::collections::HashSet::new();
        while let Some(path) = next.take() {
            if !seen.insert(path.clone()) || seen.len() > MAX_TAG_PAGES {
                return Err(ImageError::format(
                    format!("{} tag list", self.name),
                    format!(
                        "the pages' Link headers loop or go on past {MAX_TAG_PAGES} pages (at {path})"
                    ),
                ));
            }
            let mut resp = self.get(&path, "application/json")?;
            next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .map(|l| {
                    if l.starts_with('/') || l.starts_with("http") {
                        l
                    } else {
                        format!("/{l}")
                    }
                });
            let body = resp
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()
                .map_err(|e| ImageError::format(path.clone(), e))?;
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| ImageError::format(format!("{} tag list", self.name), e))?;
            out.extend(page.tags.unwrap_or_default());
        }
        Ok(out)
    }
}

impl ImageSource for Registry {
    fn resolve(&self, platform: &Platform) -> Result<Resolved, ImageError> {
        crate::image::source::resolve_with(
            &self.name,
            platform,
            self.name.reference(),
            None,
            |reference, _| self.manifest(reference),
            |config| self.small_blob(config),
        )
    }

    fn blob(&self, d: &Descriptor) -> Result<Box<dyn Read + Send>, ImageError> {
        let path = format!("/v2/{}/blobs/{}", self.name.repository, d.digest);
        let resp = self.get(&path, "*/*")?;
        self.failures.lock().retain(|(x, _)| *x != d.digest);
        let body = resp.into_body().into_with_config().limit(u64::MAX).reader();
        Ok(Box::new(Watched::new(
            Box::new(body),
            network().idle_timeout,
            d.digest.clone(),
            Arc::clone(&self.failures),
        )))
    }

    fn transfer_failure(&self, d: &Digest) -> Option<String> {
        self.last_failure(d)
    }
}

impl Registry {
    /// A small blob (the config) read whole, again from the start after a failure in
    /// transit.
    fn small_blob(&self, d: &Descriptor) -> Result<Vec<u8>, ImageError> {
        let net = network();
        let mut wait = net.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut bytes = Vec::new();
            let r = self.blob(d).and_then(|b| {
                b.take(64 << 20)
                    .read_to_end(&mut bytes)
                    .map_err(|e| ImageError::format(format!("{} config", self.name), e))
            });
            let Err(e) = r else { return Ok(bytes) };
            let Some(why) = self.last_failure(&d.digest) else {
                return Err(e);
            };
            if attempt > net.retries {
                return Err(ImageError::Transfer {
                    what: format!("{}: config blob {}", self.name, d.digest),
                    reason: why,
                    attempts: attempt,
                });
            }
            warn!(blob = %d.digest, attempt, "{why}: fetching it again in {:.1} s", wait.as_secs_f64());
            std::thread::sleep(wait);
            wait = wait.saturating_mul(2);
        }
    }

    fn last_failure(&self, d: &Digest) -> Option<String> {
        self.failures
            .lock()
            .iter()
            .find(|(x, _)| x == d)
            .map(|(_, why)| why.clone())
    }
}

/// A blob body read on its own thread, so that a registry that sends part of a blob and
/// then nothing is noticed: no bytes for `idle` is a stall, reported as `TimedOut` and
/// recorded with every other failure in transit (the thread stuck in the socket read stays
/// behind until the process ends).
struct Watched {
    rx: crossbeam_channel::Receiver<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
    idle: Duration,
    digest: Digest,
    failures: Arc<Mutex<Vec<(Digest, String)>>>,
    done: bool,
}

impl Watched {
    fn new(
        mut body: Box<dyn Read + Send>,
        idle: Duration,
        digest: Digest,
        failures: Arc<Mutex<Vec<(Digest, String)>>>,
    ) -> Watched {
        let (tx, rx) = crossbeam_channel::bounded(4);
        std::thread::spawn(move || {
            loop {
                let mut chunk = vec![0u8; 256 << 10];
                match body.read(&mut chunk) {
                    Ok(0) => {
                        let _ = tx.send(Ok(Vec::new()));
                        return;
                    }
                    Ok(n) => {
                        chunk.truncate(n);
                        if tx.send(Ok(chunk)).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        Watched {
            rx,
            buf: Vec::new(),
            pos: 0,
            idle,
            digest,
            failures,
            done: false,
        }
    }

    fn fail(&self, why: String, kind: std::io::ErrorKind) -> std::io::Error {
        self.failures
            .lock()
            .push((self.digest.clone(), why.clone()));
        std::io::Error::new(kind, why)
    }
}

impl Read for Watched {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv_timeout(self.idle) {
                Ok(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Ok(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(self.fail(format!("cut off: {e}"), e.kind())),
                Err(_) => {
                    let why = format!(
                        "stalled: no data for {} s",
                        self.idle.as_secs_f64().round() as u64
                    );
                    return Err(self.fail(why, std::io::ErrorKind::TimedOut));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn check(url: &str, mut resp: Response<ureq::Body>) -> Result<Response<ureq::Body>, ImageError> {
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let body = resp
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.lines().next().unwrap_or("").to_string());
    Err(ImageError::Registry {
        url: url.to_string(),
        status,
        message,
    })
}

trait ReadJson {
    fn read_json_bytes(&mut self) -> Result<Vec<u8>, String>;
}

impl ReadJson for ureq::Body {
    fn read_json_bytes(&mut self) -> Result<Vec<u8>, String> {
        self.with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| e.to_string())
    }
}

/// `key="value", key2=value2` pairs of an auth challenge.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let after = after.trim_start();
        let (v, tail) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(i) => (&q[..i], &q[i + 1..]),
                None => (q, ""),
            }
        } else {
            after.split_once(',').map_or((after, ""), |(v, t)| (v, t))
        };
        out.push((k.trim().to_ascii_lowercase(), v.to_string()));
        rest = tail.trim_start_matches([',', ' ']);
    }
    out
}

/// Whether `url` has the scheme, host and port of `base` (`scheme://host[:port]`).
fn same_origin(url: &str, base: &str) -> bool {
    url.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

/// The target of `Link: <url>; rel="next"`.
fn next_link(h: &str) -> Option<String> {
    h.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// User and password for `registry`: the environment first, then credential files.
fn credentials(registry: &str) -> Option<(String, String)> {
    for (u, p) in [
        ("STRATAFS_REGISTRY_USER", "STRATAFS_REGISTRY_PASSWORD"),
        ("DUCC_DOCKER_REGISTRY_USER", "DUCC_DOCKER_REGISTRY_PASS"),
    ] {
        if let (Ok(u), Ok(p)) = (std::env::var(u), std::env::var(p)) {
            return Some((u, p));
        }
    }
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(f.into());
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(x).join("containers/auth.json"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        let h = PathBuf::from(h);
        files.push(h.join(".config/containers/auth.json"));
        files.push(h.join(".docker/config.json"));
    }
    files.push(
        format!(
            "/run/containers/{}/auth.json",
            rustix::process::geteuid().as_raw()
        )
        .into(),
    );
    files
        .iter()
        .find_map(|f| from_auth_file(&std::fs::read(f).ok()?, registry))
}

fn from_auth_file(bytes: &[u8], registry: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let host = |k: &str| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k.split('/').next().unwrap_or("").to_string()
    };
    let want = match registry {
        "docker.io" => "index.docker.io",
        r => r,
    };
    let entry = auths
        .iter()
        .find(|(k, _)| host(k) == want || host(k) == registry)?
        .1;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(entry.get("auth")?.as_str()?)
        .ok()?;
    let (u, p) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_registrys_own_urls_are_its_origin() {
        let base = "https://reg.io:5000";
        assert!(same_origin("https://reg.io:5000/v2/x/tags/list?n=1", base));
        assert!(!same_origin("https://reg.io:5000.evil.org/v2/", base));
        assert!(!same_origin("https://reg.io:50001/v2/", base));
        assert!(!same_origin("http://reg.io:5000/v2/", base));
        assert!(!same_origin("https://evil.org/v2/?reg.io:5000", base));
    }

    #[test]
    fn parses_challenges_and_links() {
        let p = parse_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[2].1, "repository:library/busybox:pull");
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=x&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x&n=2")
        );
        assert_eq!(encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }

    #[test]
    fn reads_auth_files() {
        let f = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"127.0.0.1:5000":{"auth":"YWxpY2U6c2VjcmV0"}}}"#;
        assert_eq!(
            from_auth_file(f, "127.0.0.1:5000"),
            Some(("alice".into(), "secret".into()))
        );
        assert_eq!(
            from_auth_file(f, "docker.io"),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(from_auth_file(f, "quay.io"), None);
    }
}
