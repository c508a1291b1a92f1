//! `stratafs convert` and `gc` on real images: podman-built and umoci-built images through
//! OCI layouts, oci-archive and docker-archive files made by skopeo, a real registry on
//! loopback; `.flat` against `umoci unpack`, each `layerfs` against plain `tar -x`; hostile and
//! corrupt layers; a convert killed mid-layer; moved tags and gc.

#[path = "../common/mod.rs"]
mod common;
mod gc;
mod refusals;
mod sources;
mod usage;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::image::*;
use common::layout::*;
use common::*;

const CONTAINERFILE: &str = r#"FROM localhost/strata-base
RUN mkdir -p /data/keep /data/replace /data/deep/a/b && echo one > /data/keep/a && \
    echo two > /data/replace/old && echo three > /data/gone && echo four > /data/deep/a/b/f && \
    ln /data/keep/a /data/keep/hard && touch /data/replace/.hidden
RUN rm /data/gone /bin/ls && rm -rf /data/replace && mkdir /data/replace && \
    echo new > /data/replace/new && chmod 4755 /data/keep/a && rm -rf /data/deep/a/b
RUN echo more > /data/keep/b && ln -s ../keep/a /data/replace/link && mkdir /data/deep/a/b && \
    echo back > /data/deep/a/b/g && mv /data/keep/b /data/keep/c
ENV GREETING=hello
CMD ["/bin/sh", "-c", "cat /data/keep/c"]
"#;

fn convert(args: &[&str]) -> Output {
    run(Command::new(BIN).arg("convert").args(args))
}

fn convert_ok(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = convert(&all);
    assert!(
        out.status.success(),
        "convert {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn convert_err(args: &[&str]) -> String {
    let out = convert(args);
    assert!(!out.status.success(), "convert {args:?} succeeded");
    let e = String::from_utf8_lossy(&out.stderr);
    let last = e.lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("stratafs: "), "{e}");
    last
}

/// Names `convert` adds to `.flat` (apptainer scaffolding, CVMFS marker) when the image has
/// none; they are not part of the image.
const SCAFFOLD: &[&str] = &[
    ".cvmfscatalog",
    ".singularity.d",
    "dev",
    "proc",
    "sys",
    "tmp",
    "var",
    "var/tmp",
    "home",
    "root",
    "etc",
];

/// Hard links compared as groups, link counts left out (`.flat` files are links of the
/// layer's own), the root's time left out (layer tars made by podman carry no root entry);
/// scaffolding names absent from `reference` dropped.
fn normalize(
    mut s: BTreeMap<PathBuf, Entry>,
    reference: Option<&BTreeMap<PathBuf, Entry>>,
) -> BTreeMap<PathBuf, Entry> {
    if let Some(r) = reference {
        s.retain(|p, _| r.contains_key(p) || !SCAFFOLD.iter().any(|x| p.starts_with(x)));
    }
    s.remove(&PathBuf::from(".cvmfscatalog"));
    for e in s.values_mut() {
        e.nlink = 0;
    }
    image_tree(s)
}

fn assert_flat_equals_umoci(flat: &Path, layout_ref: &str, scratch: &Path) {
    let bundle = scratch.join(format!("umoci-{}", layout_ref.len()));
    let _ = std::fs::remove_dir_all(&bundle);
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image", layout_ref])
            .arg(&bundle),
    );
    let reference = normalize(snapshot(&bundle.join("rootfs")), None);
    let ours = normalize(snapshot(flat), Some(&reference));
    assert_same_tree(&ours, &reference);
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn manifest_of_layout(layout: &Path, tag: &str) -> (Vec<u8>, serde_json::Value) {
    let index = json(&layout.join("index.json"));
    let d = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = std::fs::read(blob_path(layout, &d)).unwrap();
    let v = serde_json::from_slice(&bytes).unwrap();
    (bytes, v)
}

fn layer_dir(repo: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    repo.join(".layers").join(&hex[..2]).join(hex)
}

/// An OCI layout's directory and its layers' digests.
type Layout = (PathBuf, Vec<String>);
