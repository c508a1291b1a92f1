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
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descs = Vec::new();
    let mut digests = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let gz = gzip(l);
        let d = put_blob(dir, &gz);
        diff_ids.push(format!("sha256:{}", sha256_hex(l)));
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
