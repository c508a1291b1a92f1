//! The repository layout, spelled once: every path under a repository root and the reading
//! of a directory back into what it is. The image side writes the layout; mounts, traces and
//! the snapshotter read it.
//!
//! ```text
//! ROOT/.layers/<xx>/<hex>/layerfs     a layer, unpacked   (xx: the first two hex digits)
//! ROOT/.layers/<xx>/<hex>/.metadata   its origin and size, and its record
//! ROOT/.flat/<xx>/<hex>               an image's merged root, by config digest
//! ROOT/.metadata/<name>/              an image's manifest and config, by name
//! ROOT/.traces/<xx>/<hex>.json        an image's trace, by config digest
//! ```

use std::path::{Path, PathBuf};

pub const LAYERS: &str = ".layers";
pub const FLAT: &str = ".flat";
pub const METADATA: &str = ".metadata";
pub const TRACES: &str = ".traces";
/// A layer's files, inside its directory (beside its `.metadata`).
pub const LAYERFS: &str = "layerfs";

/// Whether `hex` names a digest in the layout: 64 lowercase hex digits (sha256), as every
/// digest of the image side is validated; anything else is not ours.
pub fn is_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The fan-out directory of a digest's hex (its first two digits; "00" for a short one).
fn xx(hex: &str) -> &str {
    hex.get(..2).unwrap_or("00")
}

/// `ROOT/.layers/<xx>/<hex>`: a layer's directory.
pub fn layer_dir(root: &Path, hex: &str) -> PathBuf {
    root.join(LAYERS).join(xx(hex)).join(hex)
}

/// `ROOT/.layers/<xx>/<hex>/layerfs`: a layer's files.
pub fn layerfs(root: &Path, hex: &str) -> PathBuf {
    layer_dir(root, hex).join(LAYERFS)
}

/// A layer's record, in its metadata (see [`crate::stack::record`]).
pub const RECORD: &str = "record";

/// `<layer dir>/.metadata/record`: the record of the layer whose directory is `layer_dir`.
pub fn record_file(layer_dir: &Path) -> PathBuf {
    layer_dir.join(METADATA).join(RECORD)
}

/// The record of the tree at `dir` when it is a layer's files (`.layers/<xx>/<hex>/layerfs`)
/// or a flat root (`.flat/<xx>/<hex>`), and the digest hex the record must name; `None` when
/// `dir` is neither by its name.
pub fn record_for(dir: &Path) -> Option<(PathBuf, String)> {
    let d = RepoDir::parse(dir)?;
    let file = if d.flat {
        flat_record_file(d.root_of(dir)?, &d.hex)
    } else {
        record_file(dir.parent()?)
    };
    Some((file, d.hex))
}

/// `ROOT/.flat/<xx>/<hex>.record`: the record of an image's merged root (beside it: the
/// root itself is what a container sees).
pub fn flat_record_file(root: &Path, config_hex: &str) -> PathBuf {
    root.join(FLAT)
        .join(xx(config_hex))
        .join(format!("{config_hex}.{RECORD}"))
}

/// The signatures of the record `record` (`<record>.sig`).
pub fn sig_of(record: &Path) -> PathBuf {
    let mut s = record.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// `ROOT/.flat/<xx>/<hex>`: an image's merged root, by its config digest.
pub fn flat_dir(root: &Path, config_hex: &str) -> PathBuf {
    root.join(FLAT).join(xx(config_hex)).join(config_hex)
}

/// `ROOT/.traces/<xx>/<hex>.json`: an image's trace, by its config digest.
pub fn trace_file(root: &Path, config_hex: &str) -> PathBuf {
    root.join(TRACES)
        .join(xx(config_hex))
        .join(format!("{config_hex}.json"))
}

/// `ROOT/.metadata`: the images' manifests and configs, by name.
pub fn metadata_dir(root: &Path) -> PathBuf {
    root.join(METADATA)
}

/// What a directory is in the layout, by its name: a layer's files
/// (`.layers/<xx>/<hex>/layerfs`) or a flat root (`.flat/<xx>/<hex>`), with the digest's hex
/// and how many levels below the repository root it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoDir {
    pub flat: bool,
    pub hex: String,
    pub depth: usize,
}

impl RepoDir {
    /// Parse `dir` as named (resolve symlinks first where the name may be a link). The fan-out
    /// directory must be the hex's first two digits.
    pub fn parse(dir: &Path) -> Option<RepoDir> {
        let parts: Vec<&str> = dir.iter().filter_map(|c| c.to_str()).collect();
        let (flat, fan, hex, depth) = match parts.as_slice() {
            [.., LAYERS, x, h, LAYERFS] => (false, *x, *h, 4),
            [.., FLAT, x, h] => (true, *x, *h, 3),
            _ => return None,
        };
        (is_hex(hex) && fan == xx(hex)).then(|| RepoDir {
            flat,
            hex: hex.to_string(),
            depth,
        })
    }

    /// The repository root the directory `dir` (this) sits in.
    pub fn root_of<'a>(&self, dir: &'a Path) -> Option<&'a Path> {
        dir.ancestors().nth(self.depth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "7175808555cc36eb4bb14a3e0b30b6319320c90e1e9cc0a3d6d63ce5e2a32452";

    #[test]
    fn paths_are_spelled_once_and_read_back() {
        let root = Path::new("/r");
        let l = layerfs(root, H);
        assert_eq!(l, Path::new("/r/.layers/71").join(H).join("layerfs"));
        let f = flat_dir(root, H);
        assert_eq!(f, Path::new("/r/.flat/71").join(H));
        assert_eq!(
            trace_file(root, H),
            Path::new("/r/.traces/71").join(format!("{H}.json"))
        );
        for (p, flat) in [(&l, false), (&f, true)] {
            let d = RepoDir::parse(p).unwrap();
            assert_eq!((d.flat, d.hex.as_str()), (flat, H));
            assert_eq!(d.root_of(p), Some(root));
        }
    }

    #[test]
    fn only_lowercase_sha256_hex_in_its_own_fan_out_counts() {
        let root = Path::new("/r");
        assert!(RepoDir::parse(&layerfs(root, &H.to_uppercase())).is_none());
        assert!(RepoDir::parse(&layerfs(root, &H[..63])).is_none());
        let wrong_fan = Path::new("/r/.layers/00").join(H).join("layerfs");
        assert!(RepoDir::parse(&wrong_fan).is_none());
        assert!(RepoDir::parse(Path::new("/r/.layers/71/x/layerfs")).is_none());
    }
}
