//! Traces in a repository: saved from an access log (`stratafs trace`), and found again for
//! whatever stack of an image's directories a mount is given: its layers (`mount --repo`,
//! the containerd snapshotter) or its flat root (podman's store).

use std::path::{Path, PathBuf};

use super::error::Error as ImageError;
use super::repo::{Image, Repo};
use crate::stack::trace::{self, RepoDir, Trace, TraceFile};

/// What a stack of directories is in the repository that holds them.
enum Stacked {
    /// `<root>/.flat/<xx>/<config hex>`.
    Flat { root: PathBuf, config: String },
    /// `<root>/.layers/<xx>/<hex>/layerfs` each, top first.
    Layers { root: PathBuf, layers: Vec<String> },
}

/// `(repository root, is it a flat root, hex)` of `dir`, symlinks resolved (podman's store
/// links to flat roots).
fn place(dir: &Path) -> Option<(PathBuf, bool, String)> {
    let real = std::fs::canonicalize(dir).ok()?;
    let d = RepoDir::parse(&real)?;
    Some((real.ancestors().nth(d.depth)?.to_path_buf(), d.flat, d.hex))
}

fn stacked(dirs: &[PathBuf]) -> Option<Stacked> {
    let places: Vec<_> = dirs.iter().map(|d| place(d)).collect::<Option<_>>()?;
    let root = places.first()?.0.clone();
    if places.iter().any(|(r, _, _)| *r != root) {
        return None;
    }
    match places.as_slice() {
        [(_, true, config)] => Some(Stacked::Flat {
            root,
            config: config.clone(),
        }),
        ps if ps.iter().all(|(_, flat, _)| !flat) => Some(Stacked::Layers {
            root,
            layers: ps.iter().map(|(_, _, h)| h.clone()).collect(),
        }),
        _ => None,
    }
}

/// The image whose layers, top first, are exactly `layers` (hex digests).
fn image_with_layers(repo: &Repo, layers: &[String]) -> Option<Image> {
    repo.images().ok()?.into_iter().find(|i| {
        i.manifest.layers.len() == layers.len()
            && i.manifest
                .layers
                .iter()
                .rev()
                .zip(layers)
                .all(|(l, h)| l.digest.hex() == h)
    })
}

/// The config digest (hex) of the image a mount stacks from `dirs`, with its repository root.
fn config_of(dirs: &[PathBuf]) -> Option<(PathBuf, String)> {
    match stacked(dirs)? {
        Stacked::Flat { root, config } => Some((root, config)),
        Stacked::Layers { root, layers } => {
            let repo = Repo::read(&root).ok()?;
            let img = image_with_layers(&repo, &layers)?;
            Some((root, img.manifest.config.digest.hex().to_string()))
        }
    }
}

/// The saved trace of the image that `dirs` (lower layers, top first) stack, if any.
pub fn find(dirs: &[PathBuf]) -> Option<PathBuf> {
    let (root, config) = config_of(dirs)?;
    let p = trace::path_in_repo(&root, &config);
    p.is_file().then_some(p)
}

/// The trace of the image with config `sha256:<hex>` in `repo`, if saved.
pub fn find_for_config(repo: &Repo, config_hex: &str) -> Option<PathBuf> {
    let p = trace::path_in_repo(&repo.root, config_hex);
    p.is_file().then_some(p)
}

/// Save the files an access log records as the trace of an image of `repo`: the one named
/// (`image`), else the one whose layers or flat root the log's mount stacked. Returns where
/// it was written and how many files it holds.
pub fn save_from_log(
    repo: &Repo,
    log: &Path,
    image: Option<&str>,
) -> Result<(PathBuf, usize), ImageError> {
    let bad = |reason: String| ImageError::Format {
        what: format!("access log {}", log.display()),
        reason,
    };
    let text = std::fs::read_to_string(log).map_err(|e| ImageError::io(log, e))?;
    let mut lines = text.lines();
    let header: serde_json::Value = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| bad("not an access log (no header line)".into()))?;
    let config = match image {
        Some(name) => repo
            .find_image(name)?
            .0
            .manifest
            .config
            .digest
            .hex()
            .to_string(),
        None => {
            let dirs: Vec<PathBuf> = header["layers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(PathBuf::from))
                        .collect()
                })
                .unwrap_or_default();
            image_of_log_layers(repo, &dirs).ok_or_else(|| {
                bad(
                    "its layers are no image of this repository: name the image with --image"
                        .into(),
                )
            })?
        }
    };
    let mut files = Vec::new();
    for (i, l) in lines.enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(l).map_err(|e| bad(format!("line {}: {e}", i + 2)))?;
        let (Some(path), Some(bytes)) = (v["path"].as_str(), v["bytes"].as_u64()) else {
            return Err(bad(format!("line {}: no path or bytes", i + 2)));
        };
        files.push(TraceFile {
            path: path.to_string(),
            bytes,
        });
    }
    let t = Trace {
        image: Some(format!("sha256:{config}")),
        files,
    };
    let dest = trace::path_in_repo(&repo.root, &config);
    t.save(&dest).map_err(|e| bad(e.to_string()))?;
    Ok((dest, t.files.len()))
}

/// The image of `repo` a log's layer paths stacked: recognised by the digests in the paths,
/// so a log made on a CernVM-FS client matches the repository it was published from. A
/// writable layer listed first is skipped.
fn image_of_log_layers(repo: &Repo, dirs: &[PathBuf]) -> Option<String> {
    let hex_of = |p: &Path, flat: bool| -> Option<String> {
        RepoDir::parse(p).filter(|d| d.flat == flat).map(|d| d.hex)
    };
    for skip in 0..dirs.len().min(2) {
        let rest = &dirs[skip..];
        if let [one] = rest {
            if let Some(cfg) = hex_of(one, true) {
                return Some(cfg);
            }
        }
        let layers: Option<Vec<String>> = rest.iter().map(|d| hex_of(d, false)).collect();
        if let Some(img) = layers.and_then(|l| image_with_layers(repo, &l)) {
            return Some(img.manifest.config.digest.hex().to_string());
        }
    }
    None
}
