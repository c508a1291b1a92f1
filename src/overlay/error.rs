//! Errors of the overlay core: opening a stack of layers and its writable layer. Each names
//! the directory at fault as the option that gave it.

use std::path::PathBuf;

use crate::stack::LayerError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lowerdir {0}")]
    Lower(LayerError),
    #[error("option lowerdir: no lower directory given")]
    NoLowerdir,
    #[error("upperdir {0}")]
    Upper(LayerError),
    #[error("option verify_trust: {0}")]
    Trust(crate::stack::trust::TrustError),
    #[error("verify=on: layer {layer}: {reason}")]
    Unverifiable { layer: PathBuf, reason: String },
    #[error("option workdir={path}: {reason}")]
    Workdir { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;
