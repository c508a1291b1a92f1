//! A registry that lies, stalls and fails: a proxy in front of a real `docker-registry` on
//! loopback that adds hostile tags to the tag list, answers blob requests with 503 and 429,
//! cuts a blob off half-way or sends half of it and then nothing. `convert` must skip bad
//! names with a warning, retry what is transient, give up on a stall with one line naming the
//! blob, and leave nothing in the repository but what the next run cleans.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::layout::*;
use common::*;

/// What the proxy does to requests.
#[derive(Default)]
struct Plan {
    /// Added to every tag list.
    evil_tags: Vec<String>,
    /// Blob requests to answer with these statuses first, in order (429 with Retry-After: 1).
    blob_statuses: Vec<u16>,
    /// Blob GETs to cut off half-way (then close), counting down.
    cut_blobs: usize,
    /// A blob (digest) to send half of and then stall on, every time.
    stall: Option<String>,
    /// A `Link: <URL>; rel="next"` added to every tag list: a next page on another host.
    link_to: Option<String>,
}

struct Proxy {
    port: u16,
    blob_gets: Arc<AtomicUsize>,
}

fn read_head(s: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Some(head);
        }
    }
}

/// Fetch `head` from the real registry (connection closed after the response).
fn upstream(port: u16, head: &str) -> (String, Vec<u8>) {
    let mut up = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head: String = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect();
    up.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut all = Vec::new();
    up.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    (head, all[split..].to_vec())
}

fn with_body(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out: String = head
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.is_empty() && !l.starts_with("content-length:") && !l.starts_with("connection:")
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut v = out.into_bytes();
    v.extend_from_slice(body);
    v
}

impl Proxy {
    fn start(upstream_port: u16, plan: Plan) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let plan = Arc::new(Mutex::new(plan));
        let blob_gets = Arc::new(AtomicUsize::new(0));
        let gets = Arc::clone(&blob_gets);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let plan = Arc::clone(&plan);
                let gets = Arc::clone(&gets);
                std::thread::spawn(move || serve(conn, upstream_port, &plan, &gets));
            }
        });
        Proxy { port, blob_gets }
    }
}

fn serve(conn: TcpStream, up: u16, plan: &Mutex<Plan>, gets: &AtomicUsize) {
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    // One request per connection: every answer says `Connection: close`.
    if let Some(head) = read_head(&mut r) {
        let first = head.lines().next().unwrap_or("").to_string();
        let path = first.split(' ').nth(1).unwrap_or("").to_string();
        let is_blob_get = first.starts_with("GET ") && path.contains("/blobs/sha256:");
        if is_blob_get {
            gets.fetch_add(1, Ordering::SeqCst);
            let status = {
                let mut p = plan.lock().unwrap();
                (!p.blob_statuses.is_empty()).then(|| p.blob_statuses.remove(0))
            };
            if let Some(st) = status {
                let extra = if st == 429 { "Retry-After: 1\r\n" } else { "" };
                let _ = out.write_all(
                    format!("HTTP/1.1 {st} Busy\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                return;
            }
        }
        let (h, body) = upstream(up, &head);
        if path.contains("/tags/list") && h.starts_with("HTTP/1.1 200") {
            let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let evil = plan.lock().unwrap().evil_tags.clone();
            let tags = v["tags"].as_array_mut().unwrap();
            tags.extend(evil.into_iter().map(serde_json::Value::from));
            let h = match &plan.lock().unwrap().link_to {
                Some(url) => {
                    let (status, rest) = h.split_once("\r\n").unwrap();
                    format!("{status}\r\nLink: <{url}>; rel=\"next\"\r\n{rest}")
                }
                None => h,
            };
            let _ = out.write_all(&with_body(&h, &serde_json::to_vec(&v).unwrap()));
            return;
        }
        if is_blob_get && h.starts_with("HTTP/1.1 200") {
            let (stall, cut) = {
                let mut p = plan.lock().unwrap();
                let stall = p.stall.as_ref().is_some_and(|d| path.ends_with(d.as_str()));
                let cut = !stall && p.cut_blobs > 0;
                if cut {
                    p.cut_blobs -= 1;
                }
                (stall, cut)
            };
            if stall || cut {
                let full = with_body(&h, &body);
                let half = full.len() - body.len() / 2;
                let _ = out.write_all(&full[..half]);
                let _ = out.flush();
                if stall {
                    std::thread::sleep(Duration::from_secs(3600));
                }
                return; // cut: the connection closes mid-body
            }
        }
        let _ = out.write_all(&with_body(&h, &body));
    }
}

/// An image of two layers (the top one big enough to cut in half) in a real registry.
fn setup(tmp: &Path) -> (TestRegistry, Vec<String>) {
    let noise: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let bottom = tar_bytes(&[TarEntry::Dir("etc"), TarEntry::File("etc/os", b"one\n")]);
    let top = tar_bytes(&[TarEntry::File("etc/big", &noise)]);
    let layout = tmp.join("layout");
    let digests = make_layout(&layout, "v1", &[bottom, top]);
    let reg = TestRegistry::start(&tmp.join("reg"), &[]);
    let src = format!("oci:{}:v1", layout.display());
    reg.push(&src, "lab/img", "v1", None, false);
    reg.push(&src, "lab/img", "v2", None, false);
    (reg, digests)
}

fn convert(repo: &Path, args: &[&str]) -> std::process::Output {
    run(Command::new(BIN)
        .args(["convert", "--repo"])
        .arg(repo)
        .args(args))
}

/// Everything under `root`, as relative paths.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn hostile_tags_are_skipped_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = setup(tmp.path());
    let evil = ["../../../../tmp/x", "a/../../b", "..", "-x", "v1/../../v9"];
    let proxy = Proxy::start(
        reg.port,
        Plan {
            evil_tags: evil.iter().map(|s| s.to_string()).collect(),
            ..Plan::default()
        },
    );
    let repo = tmp.path().join("sub/repo");
    let out = convert(
        &repo,
        &[&format!("http://127.0.0.1:{}/lab/img:*", proxy.port)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for t in evil {
        assert!(
            err.contains(&format!("bad tag '{t}'")),
            "no warning naming {t}: {err}"
        );
    }
    let host = format!("127.0.0.1:{}", proxy.port);
    let names: Vec<String> = tree(&repo)
        .into_iter()
        .filter(|p| !p.starts_with(".layers") && !p.starts_with(".flat"))
        .filter(|p| !p.starts_with(".metadata/") || p.matches('/').count() <= 3)
        .collect();
    let allowed = |p: &str| {
        [
            ".metadata",
            ".stratafs.lock",
            ".stratafs-tmp",
            "podmanStore",
            ".cvmfscatalog",
        ]
        .iter()
        .any(|a| p.starts_with(a))
            || p.starts_with(&host)
    };
    let strays: Vec<&String> = names.iter().filter(|p| !allowed(p)).collect();
    assert!(
        strays.is_empty(),
        "entries outside the image names: {strays:?}"
    );
    assert!(repo.join(format!("{host}/lab/img:v1")).exists());
    assert!(repo.join(format!("{host}/lab/img:v2")).exists());
    assert!(!tmp.path().join("sub/x").exists() && !tmp.path().join("b").exists());
    let meta = tree(&repo.join(".metadata"));
    assert!(
        meta.iter()
            .all(|p| !p.contains("..") && (p.starts_with(&host) || !p.contains('/'))),
        "{meta:?}"
    );
}

#[test]
fn transient_failures_are_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = setup(tmp.path());
    let proxy = Proxy::start(
        reg.port,
        Plan {
            blob_statuses: vec![503, 429, 502],
            cut_blobs: 1,
            ..Plan::default()
        },
    );
    let repo = tmp.path().join("repo");
    let out = convert(
        &repo,
        &[
            "-j",
            "1",
            &format!("http://127.0.0.1:{}/lab/img:v1", proxy.port),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("HTTP 503") && err.contains("HTTP 429"),
        "{err}"
    );
    assert!(
        err.contains("cut off"),
        "the cut blob was fetched again: {err}"
    );
    let flat = repo.join(format!("127.0.0.1:{}/lab/img:v1", proxy.port));
    assert_eq!(std::fs::read(flat.join("etc/big")).unwrap().len(), 400_000);
    assert!(proxy.blob_gets.load(Ordering::SeqCst) >= 6);
    assert!(tree(&repo.join(".stratafs-tmp")).is_empty());
}

#[test]
fn a_stalled_blob_fails_naming_it_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, digests) = setup(tmp.path());
    let top = digests.last().unwrap().clone();
    let proxy = Proxy::start(
        reg.port,
        Plan {
            stall: Some(top.clone()),
            ..Plan::default()
        },
    );
    let repo = tmp.path().join("repo");
    let image = format!("http://127.0.0.1:{}/lab/img:v1", proxy.port);
    let t = Instant::now();
    let out = convert(&repo, &["--timeout", "2", "--retries", "1", &image]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a stalled blob must fail: {err}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("stratafs: ") && last.contains(&top) && last.contains("stalled"),
        "one line naming the blob: {err}"
    );
    assert!(last.contains("2 attempts"), "{last}");
    let hex = top.trim_start_matches("sha256:");
    assert!(!repo.join(format!(".layers/{}/{hex}", &hex[..2])).exists());
    // Partial layers removed: with nothing converted, the repository this run created is
    // gone as a whole.
    assert!(!repo.exists(), "{:?}", tree(&repo));
    assert!(
        !repo
            .join(format!("127.0.0.1:{}/lab/img:v1", proxy.port))
            .exists()
    );
    // The next run against the real registry completes.
    let out = convert(&repo, &[&format!("http://{}/lab/img:v1", reg.host())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Another host that records every request head it gets and asks for credentials, as a
/// thief would.
fn recorder() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let mut out = conn.try_clone().unwrap();
            if let Some(head) = read_head(&mut BufReader::new(conn)) {
                seen.lock().unwrap().push(head);
            }
            let _ = out.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, heads)
}

/// A tag list whose next page is on another host: the registry's credentials stay with the
/// registry (the cached Authorization is not sent there, and its challenge is not answered).
#[test]
fn credentials_never_follow_a_link_to_another_host() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    make_layout(&layout, "v1", &[tar_bytes(&[TarEntry::File("f", b"x")])]);
    let reg = TestRegistry::start(&tmp.path().join("reg"), &[("alice", "secret")]);
    let src = format!("oci:{}:v1", layout.display());
    reg.push(&src, "lab/img", "v1", Some("alice:secret"), false);
    let (thief, heads) = recorder();
    let next = format!("http://127.0.0.1:{thief}/v2/lab/img/tags/list?last=v1&n=1000");
    let proxy = Proxy::start(
        reg.port,
        Plan {
            link_to: Some(next.clone()),
            ..Plan::default()
        },
    );
    let out = run(Command::new(BIN)
        .args(["convert", "--repo"])
        .arg(tmp.path().join("repo"))
        .arg(format!("http://127.0.0.1:{}/lab/img:*", proxy.port))
        .env("STRATAFS_REGISTRY_USER", "alice")
        .env("STRATAFS_REGISTRY_PASSWORD", "secret"));
    let err = String::from_utf8_lossy(&out.stderr);
    let seen = heads.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "the link was followed once: {seen:?} {err}");
    assert!(
        !seen[0].to_ascii_lowercase().contains("authorization"),
        "credentials sent to another host: {}",
        seen[0]
    );
    assert!(!out.status.success());
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.contains(&next) && last.contains("only sent to the registry"),
        "{err}"
    );
}
