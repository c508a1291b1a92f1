//! Errors of the mount front end: options, the mountpoint, the kernel mount and the daemon.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Overlay(#[from] crate::overlay::Error),
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
    #[error("access log {path}: {reason}")]
    AccessLog { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;
