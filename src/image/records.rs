//! The records `convert` writes beside each layer and flat root (what `verify=on` mounts check
//! them against), signed with `--sign`, and how `--repair` tells a layer in order from one to
//! fetch again.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::image::Error as ImageError;
use crate::image::digest::Digest;
use crate::image::unpack::Unpacked;
use crate::stack::{Layer, layout};

/// Write the record of the layer unpacked (and checked) in `tmp`: what `verify=on` mounts
/// check it against. Made after the deferred hard links, so that it holds the layer as
/// installed.
pub(super) fn write_record(
    tmp: &Path,
    u: &Unpacked,
    sign: Option<&crate::stack::trust::SigningKey>,
) -> Result<(), ImageError> {
    use crate::stack::record;
    let raw = |d: &Option<Digest>| d.as_ref().map_or([0; 32], |d| d.raw());
    let fs = tmp.join(layout::LAYERFS);
    let known = record::by_path(&u.digests);
    let bytes = record::build(&fs, &known, (raw(&u.compressed_digest), raw(&u.diff_id)))
        .map_err(|e| ImageError::io(&fs, io::Error::other(e.to_string())))?;
    save_record(&layout::record_file(tmp), &bytes, sign)
}

/// Write a record built as `bytes` to `file` (its signature first, with a key to sign with),
/// each by a temporary name and a rename.
fn save_record(
    file: &Path,
    bytes: &[u8],
    sign: Option<&crate::stack::trust::SigningKey>,
) -> Result<(), ImageError> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
    }
    if let Some(key) = sign {
        let rec = crate::stack::record::Record::from_vec(bytes.to_vec(), file)
            .map_err(|e| ImageError::io(file, io::Error::other(e.to_string())))?;
        crate::image::repo::write_atomic(&layout::sig_of(file), key.sign(&rec).as_bytes())?;
    }
    crate::image::repo::write_atomic(file, bytes)
}

/// Whether the tree at `dir` holds exactly what the record `file` says (for --repair: the
/// first difference is logged, naming it).
pub(super) fn tree_matches(dir: &Path, file: &Path) -> bool {
    use crate::stack::{record::Record, verify};
    let (Ok(rec), Ok(mut layer)) = (Record::open(file), Layer::open(0, dir)) else {
        return false;
    };
    layer.set_verifier(verify::Verifier::new(
        rec,
        dir.display().to_string(),
        true,
        None,
    ));
    match verify::check_whole_layer(&layer) {
        Ok(()) => true,
        Err(e) => {
            warn!(layer = %dir.display(), "does not match its record ({e}): fetched again");
            false
        }
    }
}

/// Whether `file` is a readable record and, with a key to sign with, signed by that key.
pub(super) fn record_ok(file: &Path, sign: Option<&crate::stack::trust::SigningKey>) -> bool {
    let Ok(rec) = crate::stack::record::Record::open(file) else {
        return false;
    };
    sign.is_none_or(|k| {
        crate::stack::trust::TrustedKeys::from_raw(vec![k.public()])
            .check(&rec, &layout::sig_of(file))
            .is_ok()
    })
}

/// Write the record of the flat root built in `tmp` from `layers` to `file` (beside where the
/// root goes). Its files are hard links to the layers' own: their digests come from the
/// layers' records, by inode; a file that had to be copied is hashed.
pub(super) fn write_flat_record(
    tmp: &Path,
    layers: &[PathBuf],
    cfg: &Digest,
    file: &Path,
    sign: Option<&crate::stack::trust::SigningKey>,
) -> Result<(), ImageError> {
    use crate::stack::record::{self, FileDigest, Record};
    use std::collections::HashMap;
    use std::os::unix::ffi::OsStrExt;
    let mut by_inode: HashMap<(u64, u64), FileDigest> = HashMap::new();
    for l in layers {
        let Some((rec_file, _)) = layout::record_for(l) else {
            continue;
        };
        // Signing vouches for the digests taken from a layer's record: only a record this
        // key signed (made from a tar this run or an earlier one checked) may give them.
        if sign.is_some() && !record_ok(&rec_file, sign) {
            return Err(ImageError::io(
                &rec_file,
                io::Error::other(
                    "not signed by the --sign key: fetch the layer again with convert --repair --sign",
                ),
            ));
        }
        let Ok(rec) = Record::open(&rec_file) else {
            continue;
        };
        for (path, d) in rec.files() {
            let p = l.join(std::ffi::OsStr::from_bytes(&path));
            if let Ok(m) = std::fs::symlink_metadata(&p) {
                by_inode.insert((m.dev(), m.ino()), d);
            }
        }
    }
    let known = |_: &[u8], st: &rustix::fs::Stat| by_inode.get(&(st.st_dev, st.st_ino)).cloned();
    let bytes = record::build(tmp, &known, (cfg.raw(), [0; 32]))
        .map_err(|e| ImageError::io(tmp, io::Error::other(e.to_string())))?;
    save_record(file, &bytes, sign)
}
