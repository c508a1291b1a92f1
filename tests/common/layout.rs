//! Hand-made OCI layouts for the cases no tool produces (hostile layers, corrupt blobs), and
//! a real registry (Debian's docker-registry) on loopback.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use sha2::Digest as _;

use super::*;

pub fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// One tar entry of a crafted layer. Names are written raw (no checks): hostile on purpose.
pub enum TarEntry<'a> {
    File(&'a str, &'a [u8]),
    /// A file with mode 0755.
    Exec(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Char(&'a str, u32, u32),
}

pub fn tar_bytes(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, data): (&str, &[u8]) = match e {
            TarEntry::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (n, d)
            }
            TarEntry::Exec(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o755);
                (n, d)
            }
            TarEntry::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, b"")
            }
            TarEntry::Symlink(n, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                set_raw(&mut h.as_old_mut().linkname, t);
                (n, b"")
            }
            TarEntry::HardLink(n, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                set_raw(&mut h.as_old_mut().linkname, t);
                (n, b"")
            }
            TarEntry::Char(n, ma, mi) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
                (n, b"")
            }
        };
        set_raw(&mut h.as_old_mut().name, name);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn set_raw(field: &mut [u8], s: &str) {
    assert!(s.len() < field.len(), "name too long for a plain header");
    field.fill(0);
    field[..s.len()].copy_from_slice(s.as_bytes());
}

pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let hex = sha256_hex(bytes);
    let p = dir.join("blobs/sha256");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// An OCI layout `dir` with one image tagged `tag` whose layers (bottom first) are the given
/// uncompressed tars, stored gzip-compressed. Returns the layer digests (compressed).
pub fn make_layout(dir: &Path, tag: &str, layers: &[Vec<u8>]) -> Vec<String> {
    let with: Vec<(Vec<u8>, Compress)> =
        layers.iter().map(|l| (l.clone(), Compress::Gzip)).collect();
    make_layout_with(dir, tag, &with)
}

/// How a crafted layer is stored.
#[derive(Clone, Copy)]
pub enum Compress {
    Gzip,
    /// Two gzip members, as parallel compressors (pigz) write.
    GzipTwoMembers,
    Zstd,
    Plain,
}

pub fn make_layout_with(dir: &Path, tag: &str, layers: &[(Vec<u8>, Compress)]) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descs = Vec::new();
    let mut digests = Vec::new();
    let mut diff_ids = Vec::new();
    for (l, how) in layers {
        let (gz, media) = match how {
            Compress::Gzip => (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip"),
            Compress::GzipTwoMembers => {
                let (a, b) = l.split_at(l.len() / 2);
                (
                    [gzip(a), gzip(b)].concat(),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compress::Zstd => (
                zstd::encode_all(&l[..], 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            Compress::Plain => (l.clone(), "application/vnd.oci.image.layer.v1.tar"),
        };
        let d = put_blob(dir, &gz);
        diff_ids.push(format!("sha256:{}", sha256_hex(l)));
        descs.push(serde_json::json!({
            "mediaType": media,
            "digest": d, "size": gz.len()
        }));
        digests.push(d);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let cd = put_blob(dir, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    let md = put_blob(dir, &manifest);
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md, "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag}
            }]
        }))
        .unwrap(),
    )
    .unwrap();
    digests
}

pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// `docker-registry serve` on a free loopback port, storage in `dir`; killed on drop.
pub struct TestRegistry {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl TestRegistry {
    /// `htpasswd`: users for basic auth (`user:password`), none for an open registry.
    pub fn start(dir: &Path, htpasswd: &[(&str, &str)]) -> TestRegistry {
        Self::start_with(dir, htpasswd, None)
    }

    /// With `token`: the registry wants bearer tokens from that service.
    pub fn start_with(
        dir: &Path,
        htpasswd: &[(&str, &str)],
        token: Option<&TokenServer>,
    ) -> TestRegistry {
        require_tool("docker-registry");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let port = free_port();
        let mut auth = String::new();
        if !htpasswd.is_empty() {
            require_tool("htpasswd");
            let file = dir.join("htpasswd");
            for (i, (u, p)) in htpasswd.iter().enumerate() {
                let mut c = Command::new("htpasswd");
                c.arg("-Bb");
                if i == 0 {
                    c.arg("-c");
                }
                run_ok(c.arg(&file).arg(u).arg(p));
            }
            auth = format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            );
        }
        if let Some(t) = token {
            auth = format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: stratafs-test-registry\n    \
                 issuer: stratafs-test-issuer\n    rootcertbundle: {}\n",
                t.port,
                t.cert.display()
            );
        }
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n{auth}",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("start docker-registry");
        wait_until("registry listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        TestRegistry {
            port,
            dir: dir.to_path_buf(),
            child,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// skopeo copy `src` (any skopeo transport) to `repo:tag` here.
    pub fn push(&self, src: &str, repo: &str, tag: &str, creds: Option<&str>, all: bool) {
        require_tool("skopeo");
        let mut c = Command::new("skopeo");
        c.args(["copy", "-q", "--dest-tls-verify=false"]);
        if all {
            c.arg("--all");
        }
        if let Some(cr) = creds {
            c.args(["--dest-creds", cr]);
        }
        run_ok(
            c.arg(src)
                .arg(format!("docker://{}/{repo}:{tag}", self.host())),
        );
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A token service for the registry's `auth: token` mode: it answers every `GET` with a JWT
/// (RS256, signed by `openssl dgst`, the certificate in `x5c`) granting the scope asked for,
/// to callers that present `user:password` with basic auth.
pub struct TokenServer {
    pub port: u16,
    pub cert: PathBuf,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TokenServer {
    pub fn start(dir: &Path, user: &'static str, password: &'static str) -> TokenServer {
        use base64::Engine;
        require_tool("openssl");
        std::fs::create_dir_all(dir).unwrap();
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=stratafs-test-token"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        let der = run_ok(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&cert),
        )
        .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = requests.clone();
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let req = read_request(&mut s);
                let authorized = req.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:") && l[14..].trim() == want
                });
                let resp = if authorized {
                    let token = sign_token(&key, &x5c, &req);
                    let body = format!("{{\"token\":\"{token}\",\"access_token\":\"{token}\"}}");
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = s.write_all(resp.as_bytes());
            }
        });
        TokenServer {
            port,
            cert,
            requests,
        }
    }
}

fn read_request(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JWT for the scopes of the request line (`scope=repository:NAME:ACTIONS`, repeated).
fn sign_token(key: &Path, x5c: &str, req: &str) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut access = Vec::new();
    for kv in query.split('&') {
        if let Some(v) = kv.strip_prefix("scope=") {
            let v = percent_decode(v);
            let parts: Vec<&str> = v.split(':').collect();
            if parts.len() >= 3 {
                let actions: Vec<&str> = parts[parts.len() - 1].split(',').collect();
                access.push(serde_json::json!({
                    "type": parts[0], "name": parts[1..parts.len() - 1].join(":"), "actions": actions
                }));
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": "stratafs-test-issuer", "sub": "tester", "aud": "stratafs-test-registry",
        "exp": now + 600, "nbf": now - 60, "iat": now - 60, "jti": format!("{now}-{}", access.len()),
        "access": access
    });
    let signing_input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&header).unwrap()),
        b64(&serde_json::to_vec(&claims).unwrap())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let sig = child.wait_with_output().unwrap().stdout;
    format!("{signing_input}.{}", b64(&sig))
}
