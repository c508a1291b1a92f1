//! A trace: which files of an image a workload read, in the order it first read them, kept in
//! the repository beside the image (`.traces/<xx>/<config hex>.json`) so that a later mount
//! can fetch them before the workload asks. Paths are merged-tree paths, so one trace serves
//! every way of stacking the image (its layers or its flat root).
//!
//! ```json
//! {"image":"sha256:…","files":[{"path":"usr/bin/python3.11","bytes":6833024}, …]}
//! ```

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("trace {path}: not a trace: {reason}")]
    Format { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceFile {
    /// Relative path in the merged tree.
    pub path: String,
    /// Bytes the workload read from it.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// The image's config digest, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub files: Vec<TraceFile>,
}

pub use super::layout::RepoDir;

/// Where the trace of the image with config digest `sha256:<hex>` lives in repository `root`.
pub fn path_in_repo(root: &Path, config_hex: &str) -> PathBuf {
    super::layout::trace_file(root, config_hex)
}

impl Trace {
    pub fn load(path: &Path) -> Result<Trace, TraceError> {
        let text = std::fs::read(path).map_err(|source| TraceError::Io {
            path: path.into(),
            source,
        })?;
        let t: Trace = serde_json::from_slice(&text).map_err(|e| TraceError::Format {
            path: path.into(),
            reason: e.to_string(),
        })?;
        if let Some(bad) = t.files.iter().find(|f| !is_relative_inside(&f.path)) {
            return Err(TraceError::Format {
                path: path.into(),
                reason: format!("path {:?} leaves the tree", bad.path),
            });
        }
        Ok(t)
    }

    /// Write the trace to `path` whole or not at all (temporary name, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), TraceError> {
        let io_err = |source| TraceError::Io {
            path: path.into(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let write = || -> io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // Readable by every user of the repository, as the rest of it.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec(self)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_err(e)
        })?;
        Ok(())
    }
}

/// A trace from a hostile repository must not name paths outside the merged tree.
fn is_relative_inside(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_paths() {
        let t = tempfile::tempdir().unwrap();
        let p = path_in_repo(t.path(), "abcdef");
        assert!(p.ends_with(".traces/ab/abcdef.json"));
        let tr = Trace {
            image: Some("sha256:abcdef".into()),
            files: vec![TraceFile {
                path: "usr/bin/x".into(),
                bytes: 3,
            }],
        };
        tr.save(&p).unwrap();
        assert_eq!(Trace::load(&p).unwrap(), tr);
        for bad in ["../etc/passwd", "/etc/passwd", "a//b", "a/./b", ""] {
            std::fs::write(&p, format!(r#"{{"files":[{{"path":{bad:?},"bytes":1}}]}}"#)).unwrap();
            let e = Trace::load(&p).unwrap_err().to_string();
            assert!(e.contains("leaves the tree"), "{bad}: {e}");
        }
    }
}
