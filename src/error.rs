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
