//! Thin images: a tiny image whose only file is `thin.json`, pointing at the layers of an
//! image in a CernVM-FS repository, bottom layer first:
//!
//! ```json
//! {"version":"1.0","origin":"https://registry.hub.docker.com/library/centos:centos7",
//!  "layers":[{"digest":"<L1>","url":"cvmfs://<repo-name>/.layers/<xx>/<L1>/layerfs"}, …]}
//! ```
//!
//! `convert --thin DIR` writes one as a docker archive (`podman load -i` takes it);
//! `stratafs mount --thin thin.json` mounts what it points to.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::Error as ImageError;
use crate::image::digest::Digest;
use crate::image::manifest::Manifest;

#[derive(Debug, Serialize, Deserialize)]
pub struct Thin {
    pub version: String,
    pub origin: String,
    pub layers: Vec<ThinLayer>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ThinLayer {
    pub digest: String,
    pub url: String,
}

impl Thin {
    pub fn of(origin: &str, cvmfs_repo: &str, m: &Manifest) -> Thin {
        Thin {
            version: "1.0".into(),
            origin: origin.to_string(),
            layers: m
                .layers
                .iter()
                .map(|l| ThinLayer {
                    digest: l.digest.hex().to_string(),
                    url: format!(
                        "cvmfs://{cvmfs_repo}/.layers/{}/{}/layerfs",
                        l.digest.xx(),
                        l.digest.hex()
                    ),
                })
                .collect(),
        }
    }

    pub fn load(path: &Path) -> Result<Thin, ImageError> {
        let b = std::fs::read(path).map_err(|e| ImageError::io(path, e))?;
        serde_json::from_slice(&b).map_err(|e| ImageError::format(path.display().to_string(), e))
    }

    /// The layer directories, top first (the order of `lowerdir=`), with `cvmfs://REPO/PATH`
    /// resolved under `cvmfs_root`; a URL climbing out of its repository is refused.
    pub fn lowerdirs(&self, file: &Path, cvmfs_root: &Path) -> Result<Vec<PathBuf>, ImageError> {
        let bad = |reason: String| ImageError::format(file.display().to_string(), reason);
        let mut out = Vec::new();
        for l in self.layers.iter().rev() {
            let rest = l.url.strip_prefix("cvmfs://").ok_or_else(|| {
                bad(format!(
                    "layer url '{}': only cvmfs:// urls are supported",
                    l.url
                ))
            })?;
            let rel = Path::new(rest);
            if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                return Err(bad(format!("layer url '{}': not a plain path", l.url)));
            }
            out.push(cvmfs_root.join(rel));
        }
        if out.is_empty() {
            return Err(bad("no layers".into()));
        }
        Ok(out)
    }
}

/// The thin image's name: the recipe's `output_format` with `$(scheme)`, `$(registry)`,
/// `$(repository)`, `$(tag)`, `$(digest)`, `$(reference)`, `$(image)` filled in.
pub fn thin_name(
    format: &str,
    scheme: &str,
    registry: &str,
    repository: &str,
    tag: &str,
    digest: &str,
) -> String {
    let reference = if tag.is_empty() { digest } else { tag };
    let image = format!("{registry}/{repository}:{reference}");
    format
        .replace("$(scheme)", scheme)
        .replace("$(registry)", registry)
        .replace("$(repository)", repository)
        .replace("$(tag)", tag)
        .replace("$(digest)", digest)
        .replace("$(reference)", reference)
        .replace("$(image)", &image)
}

/// A docker archive (`podman load -i FILE`) of one image tagged `name`, whose single layer
/// holds `thin.json`. Written to a temporary name, then renamed.
pub fn write_archive(file: &Path, name: &str, thin: &Thin) -> Result<(), ImageError> {
    let io = |e: std::io::Error| ImageError::io(file, e);
    let json = serde_json::to_vec_pretty(thin).expect("serialisable");
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("thin.json").map_err(io)?;
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    layer.append(&h, &json[..]).map_err(io)?;
    let layer = layer.into_inner().map_err(io)?;
    let diff_id = Digest::of(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Labels": {"org.cernvm.thin": "1"}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]}
    }))
    .expect("serialisable");
    let cfg = Digest::of(&config);
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{}.json", cfg.hex()),
        "RepoTags": [name],
        "Layers": [format!("{}/layer.tar", diff_id.hex())]
    }]))
    .expect("serialisable");
    let tmp = file.with_extension("tmp");
    let f = std::fs::File::create(&tmp).map_err(io)?;
    let mut ar = tar::Builder::new(std::io::BufWriter::new(f));
    for (path, data) in [
        (format!("{}.json", cfg.hex()), &config),
        (format!("{}/layer.tar", diff_id.hex()), &layer),
        ("manifest.json".to_string(), &manifest),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_path(&path).map_err(io)?;
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        ar.append(&h, &data[..]).map_err(io)?;
    }
    let mut w = ar.into_inner().map_err(io)?;
    w.flush().map_err(io)?;
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&tmp, file).map_err(io)
}
