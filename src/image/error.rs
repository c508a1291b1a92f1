//! Errors of the image side: `convert`, `gc`, the repository and its readers. Each names the
//! image, layer, blob, file or entry at fault, so that the CLI's one line says where to look.

use std::io;
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    #[error("{what}: {reason} (gave up after {attempts} attempts)")]
    Transfer {
        what: String,
        reason: String,
        attempts: u32,
    },
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
    #[error("unpacks to more than {limit} bytes (convert --max-layer-size)")]
    TooLarge { limit: u64 },
    #[error("{image}: layer {layer}: {source}")]
    Layer {
        image: String,
        layer: String,
        source: Box<Error>,
    },
    #[error("recipe {path}: {reason}")]
    Recipe { path: PathBuf, reason: String },
    #[error("repository {path}: {reason}")]
    Repo { path: PathBuf, reason: String },
    #[error("--publish {target}: {reason}")]
    Publish { target: String, reason: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn format(what: impl Into<String>, reason: impl std::fmt::Display) -> Error {
        Error::Format {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
