//! What a mount is made of ([`Config`]), and under `verify=on` the checker of each layer:
//! its record found beside it, read, and matched to the layer its directory is named for.

use std::path::PathBuf;
use std::sync::Arc;

use super::Error;
use super::atime;
use super::idmap::IdMap;
use crate::stack::Layer;

/// What a mount is made of.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Read-only layers, top first.
    pub lowerdirs: Vec<PathBuf>,
    /// The writable layer and its work directory.
    pub upper: Option<(PathBuf, PathBuf)>,
    /// Refuse every change with EROFS even with a writable layer (`ro`).
    pub read_only: bool,
    /// fsync copy-ups and fsync(2) calls (off: `fsync=0`, `volatile`).
    pub fsync: bool,
    pub ids: IdMap,
    /// A server taking over a live mount from a dead one: what that one parked in W stays.
    pub resume: bool,
    /// When an access updates an atime on the writable layer.
    pub atime: atime::AtimePolicy,
    /// Check every lower layer against its record (`verify=on`).
    pub verify: Option<VerifyConfig>,
}

/// How a verifying mount checks its layers.
#[derive(Debug, Clone, Default)]
pub struct VerifyConfig {
    /// The node's table of content already checked; `None`: none.
    pub cache: Option<PathBuf>,
    /// Public keys: each layer's record must be signed by one (`verify_trust=`).
    pub trust: Vec<PathBuf>,
}

/// The node's table of checked content, when it can be used (else checks are not shared).
pub(super) fn verified_cache(
    v: &VerifyConfig,
) -> Option<Arc<crate::stack::verified::VerifiedCache>> {
    let path = v.cache.as_ref()?;
    match crate::stack::verified::VerifiedCache::open(path) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::warn!("verify: content checks not shared between mounts: {e}");
            None
        }
    }
}

/// The checker of layer `l`: its record, found beside it, must be the record of the layer
/// its directory is named for.
pub(super) fn verifier_of(
    l: &Layer,
    cache: Option<Arc<crate::stack::verified::VerifiedCache>>,
    trust: Option<&crate::stack::trust::TrustedKeys>,
) -> Result<crate::stack::verify::Verifier, Error> {
    use crate::stack::{layout, record};
    // The path the layer was given as may be a descriptor's (/proc/self/fd/N): name the
    // directory itself.
    let real = std::fs::canonicalize(&l.path).unwrap_or_else(|_| l.path.clone());
    let refuse = |reason: String| Error::Unverifiable {
        layer: real.clone(),
        reason,
    };
    // The name the layer was given by decides which layer it must be (a symlinked layer
    // directory does not make another layer this one); a descriptor's path, by what it is.
    let (file, hex) = layout::record_for(&l.path)
        .or_else(|| layout::record_for(&real))
        .ok_or_else(|| refuse("not a repository's layer or flat root: no record".into()))?;
    if !file.exists() {
        return Err(refuse(format!(
            "no record at {} (converted before records existed: see stratafs convert --repair)",
            file.display()
        )));
    }
    // With keys to trust, the record is read whole before its signature is checked, so that
    // a change to the file afterwards cannot change what was checked.
    let rec = match trust {
        Some(_) => std::fs::read(&file)
            .map_err(|e| refuse(format!("{}: {e}", file.display())))
            .and_then(|b| record::Record::from_vec(b, &file).map_err(|e| refuse(e.to_string())))?,
        None => record::Record::open(&file).map_err(|e| refuse(e.to_string()))?,
    };
    let found = record::hex(&rec.layer().0);
    if found != hex {
        return Err(refuse(format!(
            "{}: the record of layer {found}, not of this one",
            file.display()
        )));
    }
    if let Some(keys) = trust {
        keys.check(&rec, &layout::sig_of(&file))
            .map_err(|e| refuse(e.to_string()))?;
    }
    let check_owner = l.cvmfs.is_none();
    Ok(crate::stack::verify::Verifier::new(
        rec,
        real.display().to_string(),
        check_owner,
        cache,
    ))
}
