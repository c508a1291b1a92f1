//! The pipeline on temporary directories with an image held in memory: no root, no
//! network. (Real sources and registries are in `tests/convert/`.)

use super::*;
use crate::image::digest::Digest;
use crate::image::manifest::{Fetched, Platform};
use std::collections::HashMap;
use std::io::Read;

struct MemImage {
    name: ImageName,
    manifest: Vec<u8>,
    config: Vec<u8>,
    blobs: HashMap<String, Vec<u8>>,
}

enum E<'a> {
    File(&'a str, &'a str),
    Dir(&'a str),
    Link(&'a str, &'a str),
}

fn tar(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_600_000_000);
        h.set_uid(rustix::process::geteuid().as_raw() as u64);
        h.set_gid(rustix::process::getegid().as_raw() as u64);
        match e {
            E::File(p, c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(c.len() as u64);
                b.append_data(&mut h, p, c.as_bytes()).unwrap();
            }
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &b""[..]).unwrap();
            }
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn image(layers: &[Vec<u8>]) -> MemImage {
    let mut blobs = HashMap::new();
    let (mut descs, mut diff_ids) = (Vec::new(), Vec::new());
    for l in layers {
        let d = Digest::of(l).to_string();
        diff_ids.push(d.clone());
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": d, "size": l.len()
        }));
        blobs.insert(d, l.clone());
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let cd = Digest::of(&config).to_string();
    blobs.insert(cd.clone(), config.clone());
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    MemImage {
        name: ImageName::parse_bare("example.org/lab/mem:1", false).unwrap(),
        manifest,
        config,
        blobs,
    }
}

impl ImageSource for MemImage {
    fn resolve(&self, _p: &Platform) -> Result<Resolved, ImageError> {
        let manifest = match Fetched::parse("mem", None, &self.manifest)? {
            Fetched::Image(m) => m,
            _ => unreachable!("a manifest"),
        };
        Ok(Resolved {
            name: self.name.clone(),
            manifest_bytes: self.manifest.clone(),
            manifest,
            config_bytes: self.config.clone(),
        })
    }
    fn blob(&self, d: &Descriptor) -> Result<Box<dyn Read + Send>, ImageError> {
        let b = self
            .blobs
            .get(&d.digest.to_string())
            .cloned()
            .unwrap_or_default();
        Ok(Box::new(std::io::Cursor::new(b)))
    }
}

fn opts() -> Options {
    Options {
        max_layer_size: MAX_LAYER_SIZE,
        platform: Platform::parse("linux/amd64").unwrap(),
        jobs: 2,
        name: None,
        measure_disk: false,
        thin: None,
        repair: false,
        sign: None,
    }
}

#[test]
fn converts_installs_and_is_then_up_to_date() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::open(&t.path().join("repo")).unwrap();
    let bottom = tar(&[
        E::Dir("etc"),
        E::File("etc/os", "one\n"),
        E::File("etc/gone", "x"),
        E::Dir("opq"),
        E::File("opq/old", "o"),
    ]);
    let top = tar(&[
        E::File("etc/.wh.gone", ""),
        E::Dir("opq"),
        E::File("opq/.wh..wh..opq", ""),
        E::File("opq/new", "n"),
        E::Link("etc/os-link", "etc/os"),
    ]);
    let img = image(&[bottom, top]);
    let mut sum = Summary::default();
    let s = convert_source(&repo, &img, &opts(), &mut sum).unwrap();
    assert_eq!((s.status, s.layers_fetched), ("converted", 2));
    let flat = repo.public_link(&img.name);
    let read = |p: &str| std::fs::read_to_string(flat.join(p)).ok();
    assert_eq!(read("etc/os").as_deref(), Some("one\n"));
    assert_eq!(
        read("etc/os-link").as_deref(),
        Some("one\n"),
        "hard link into a lower layer"
    );
    assert_eq!(read("etc/gone"), None, "whited out");
    assert_eq!(read("opq/old"), None, "opaque dir");
    assert_eq!(read("opq/new").as_deref(), Some("n"));
    assert!(flat.join(".singularity.d/runscript").exists());
    assert!(repo.manifest_of(&img.name).is_some());
    // Layers keep their whiteouts literally, as DUCC's do.
    let top_layer = img.resolve(&opts().platform).unwrap().manifest.layers[1]
        .digest
        .clone();
    assert!(repo.layerfs(&top_layer).join("etc/.wh.gone").exists());
    let s = convert_source(&repo, &img, &opts(), &mut sum).unwrap();
    assert_eq!((s.status, s.layers_fetched), ("up to date", 0));
}

#[test]
fn a_corrupt_blob_installs_nothing() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::open(&t.path().join("repo")).unwrap();
    let mut img = image(&[tar(&[E::File("f", "x")])]);
    for b in img.blobs.values_mut() {
        if b.len() > 1000 {
            b[600] ^= 1;
        }
    }
    let e = convert_source(&repo, &img, &opts(), &mut Summary::default()).unwrap_err();
    assert!(e.to_string().contains("digest mismatch"), "{e}");
    assert!(repo.manifest_of(&img.name).is_none());
    let tmp = t.path().join("repo/.stratafs-tmp");
    assert!(!tmp.exists() || std::fs::read_dir(&tmp).unwrap().next().is_none());
}
