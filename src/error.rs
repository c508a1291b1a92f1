//! Typed errors of the library. The CLI prints them as one line.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lowerdir {path}: {source}")]
    LayerOpen { path: PathBuf, source: io::Error },
    #[error("lowerdir {path}: not a directory")]
    LayerNotDir { path: PathBuf },
    #[error("lowerdir {path}: not readable: {source}")]
    LayerUnreadable { path: PathBuf, source: io::Error },
    #[error("upperdir {path}: {reason}")]
    Upper { path: PathBuf, reason: String },
    #[error("mountpoint {path}: {source}")]
    Mountpoint { path: PathBuf, source: io::Error },
    #[error("mountpoint {path}: not a directory")]
    MountpointNotDir { path: PathBuf },
    #[error("mountpoint {path}: already a mount point of {fstype}")]
    MountpointBusy { path: PathBuf, fstype: String },
    #[error("option {option}: {reason}")]
    BadOption { option: String, reason: String },
    #[error("mount {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("daemon: {0}")]
    Daemon(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Errors of `convert`, `gc` and the repository: each names the image, layer, blob, file or
/// entry at fault, so that the CLI's one line says where to look.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("image reference '{reference}': {reason}")]
    BadReference { reference: String, reason: String },
    #[error("{what}: digest mismatch: expected {expected}, found {found}")]
    DigestMismatch {
        what: String,
        expected: String,
        found: String,
    },
    #[error("{what}: size mismatch: expected {expected} bytes, found {found}")]
    SizeMismatch {
        what: String,
        expected: u64,
        found: u64,
    },
    #[error("{url}: HTTP {status}: {message}")]
    Registry {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{what}: {reason}")]
    Format { what: String, reason: String },
    #[error("{image}: no manifest for platform {platform} (the index has: {available})")]
    NoPlatform {
        image: String,
        platform: String,
        available: String,
    },
    #[error("{image}: layer {layer}: entry '{entry}': {reason}")]
    UnsafeEntry {
        image: String,
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("{image}: layer {layer}: {source}")]
    Layer {
        image: String,
        layer: String,
        source: Box<ConvertError>,
    },
    #[error("recipe {path}: {reason}")]
    Recipe { path: PathBuf, reason: String },
    #[error("repository {path}: {reason}")]
    Repo { path: PathBuf, reason: String },
    #[error(transparent)]
    Mount(#[from] Error),
}

impl ConvertError {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> ConvertError {
        ConvertError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn format(what: impl Into<String>, reason: impl std::fmt::Display) -> ConvertError {
        ConvertError::Format {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
