//! Hostile registry responses, generated: a registry on loopback answers every request from
//! a generated script (statuses, `Link`, `WWW-Authenticate`, `Retry-After`, `Location` and
//! `Content-Length` headers that lie or loop, token replies, tag lists, manifests and indexes,
//! random bytes), cycling through it. Listing tags and resolving an image must end — with a
//! value or an error — after a bounded number of requests, never panic, and never send
//! credentials anywhere but the registry and its token realm.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;

use super::manifest::Platform;
use super::reference::ImageName;
use super::registry::{Network, Registry, configure};
use super::source::ImageSource;
use crate::test_cases as cases;

/// More requests than this for one call is a loop: the server then answers 404.
const BOUND: usize = 400;

#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A server that answers from `script`, in turn; `{addr}` in a header or body is its own
/// address, `{other}` the other host's. Counts requests, and records every path that came
/// with an Authorization header.
struct Scripted {
    addr: String,
    requests: Arc<AtomicUsize>,
    authorized: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Scripted {
    fn start(script: Vec<Reply>, other: &str) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let authorized = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, l, s) = (requests.clone(), authorized.clone(), stop.clone());
        let places = [("{addr}", addr.clone()), ("{other}", other.to_string())];
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let i = n.fetch_add(1, Ordering::Relaxed);
                let reply = if i >= BOUND {
                    None
                } else {
                    Some(&script[i % script.len()])
                };
                answer(conn, reply, &places, &l);
            }
        });
        Scripted {
            addr,
            requests,
            authorized,
            stop,
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Read one request's head and answer it (or 404 past the bound), then close.
fn answer(
    conn: TcpStream,
    reply: Option<&Reply>,
    places: &[(&str, String); 2],
    authorized: &Mutex<Vec<String>>,
) {
    let fill = |s: &str| {
        places
            .iter()
            .fold(s.to_string(), |s, (k, v)| s.replace(k, v))
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut r = BufReader::new(&conn);
    let mut first = String::new();
    if r.read_line(&mut first).unwrap_or(0) == 0 {
        return;
    }
    let path = first.split(' ').nth(1).unwrap_or("").to_string();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if line.to_ascii_lowercase().starts_with("authorization:") {
            authorized.lock().unwrap().push(path.clone());
        }
    }
    let mut out = Vec::new();
    match reply {
        None => out.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"),
        Some(rep) => {
            let body = match std::str::from_utf8(&rep.body) {
                Ok(t) => fill(t).into_bytes(),
                Err(_) => rep.body.clone(),
            };
            out.extend_from_slice(format!("HTTP/1.1 {} X\r\n", rep.status).as_bytes());
            let mut length_given = false;
            for (k, v) in &rep.headers {
                length_given |= k.eq_ignore_ascii_case("content-length");
                out.extend_from_slice(format!("{k}: {}\r\n", fill(v)).as_bytes());
            }
            if !length_given {
                out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
            }
            out.extend_from_slice(b"Connection: close\r\n\r\n");
            out.extend_from_slice(&body);
        }
    }
    if reply.is_none() {
        out.extend_from_slice(b"Connection: close\r\n\r\n");
    }
    let _ = (&conn).write_all(&out);
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => Just(200u16),
        2 => Just(401u16),
        1 => Just(404u16),
        1 => Just(429u16),
        1 => Just(500u16),
        1 => Just(503u16),
        1 => Just(302u16),
        1 => Just(307u16),
        1 => Just(204u16),
        1 => 100u16..600,
    ]
}

fn header() -> impl Strategy<Value = (String, String)> {
    let text = "[ -~]{0,40}";
    prop_oneof![
        // Next pages: itself (a loop), another page, another host, nonsense.
        Just((
            "Link".into(),
            "</v2/r/tags/list?n=1000>; rel=\"next\"".into()
        )),
        Just((
            "Link".into(),
            "</v2/r/tags/list?n=1&last=a>; rel=\"next\"".into()
        )),
        Just((
            "Link".into(),
            "<http://{other}/v2/r/tags/list>; rel=\"next\"".into()
        )),
        text.prop_map(|v| ("Link".to_string(), v)),
        // Challenges: a realm here, elsewhere, none, nonsense.
        Just((
            "WWW-Authenticate".into(),
            "Bearer realm=\"http://{addr}/token\",service=\"s\",scope=\"repository:r:pull\"".into()
        )),
        Just((
            "WWW-Authenticate".into(),
            "Bearer realm=\"http://{other}/token\"".into()
        )),
        Just(("WWW-Authenticate".into(), "Basic realm=\"r\"".into())),
        Just(("WWW-Authenticate".into(), "Bearer".into())),
        text.prop_map(|v| ("WWW-Authenticate".to_string(), v)),
        // Waits: short, negative, unparsable (a long one is capped at 120 s: not generated).
        prop_oneof![
            Just("0"),
            Just("1"),
            Just("-3"),
            Just("soon"),
            Just("99999999999999999999999")
        ]
        .prop_map(|v| ("Retry-After".to_string(), v.to_string())),
        prop_oneof![
            Just("/v2/r/manifests/t".to_string()),
            Just("http://{other}/v2/r/manifests/t".to_string()),
            Just("http://{addr}/v2/r/tags/list".to_string()),
            text.prop_map(String::from),
        ]
        .prop_map(|v| ("Location".to_string(), v)),
        prop_oneof![Just("0"), Just("5"), Just("999999"), Just("-1"), Just("x")]
            .prop_map(|v| ("Content-Length".to_string(), v.to_string())),
        prop_oneof![
            Just("application/vnd.oci.image.index.v1+json"),
            Just("application/vnd.oci.image.manifest.v1+json"),
            Just("application/vnd.docker.distribution.manifest.v2+json"),
            Just("text/html"),
        ]
        .prop_map(|v| ("Content-Type".to_string(), v.to_string())),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let name = "[a-z0-9._/ -]{0,20}|\\.\\./[a-z]{1,5}|[^\\x00]{0,10}";
    prop_oneof![
        proptest::collection::vec(name, 0..6).prop_map(|t| {
            serde_json::json!({ "name": "r", "tags": t }).to_string().into_bytes()
        }),
        Just(br#"{"tags":null}"#.to_vec()),
        Just(br#"{"tags":"t"}"#.to_vec()),
        "[ -~]{0,30}".prop_map(|t| serde_json::json!({ "token": t }).to_string().into_bytes()),
        Just(br#"{"access_token":"a\r\nX-Evil: 1"}"#.to_vec()),
        Just(br#"{"token":null}"#.to_vec()),
        Just(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2,"platform":{"architecture":"amd64","os":"linux"}}]}"#
                .to_vec()
        ),
        Just(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":-1},"layers":[]}"#
                .to_vec()
        ),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    (status(), proptest::collection::vec(header(), 0..4), body()).prop_map(
        |(status, headers, body)| Reply {
            status,
            headers,
            body,
        },
    )
}

proptest! {
    #![proptest_config(cases(150))]

    #[test]
    fn hostile_registry_responses(script in proptest::collection::vec(reply(), 1..6)) {
        configure(Network {
            idle_timeout: Duration::from_secs(2),
            retries: 1,
            backoff: Duration::from_millis(1),
        });
        // The other host answers every request with a page of tags and a token, and must
        // never see the registry's token: no credentials are configured, so any
        // Authorization it receives came from the registry.
        let other = Scripted::start(
            vec![Reply {
                status: 200,
                headers: vec![],
                body: br#"{"tags":["x"],"token":"from-other"}"#.to_vec(),
            }],
            "",
        );
        let server = Scripted::start(script, &other.addr);
        let name = ImageName::parse_bare(&format!("{}/r:t", server.addr), true).unwrap();
        let reg = Registry::new(name).unwrap();
        let _ = reg.tags();
        let listed = server.requests.load(Ordering::Relaxed);
        prop_assert!(listed < BOUND, "listing tags made {listed} requests");
        let _ = reg.resolve(&Platform::parse("linux/amd64").unwrap());
        let all = server.requests.load(Ordering::Relaxed);
        prop_assert!(all - listed < BOUND, "resolving made {} requests", all - listed);
        let leaked = other.authorized.lock().unwrap().clone();
        prop_assert!(leaked.is_empty(), "the registry's token sent to another host: {leaked:?}");
    }
}
