//! The whiteout and opaque-directory forms of the overlay contract.
//!
//! Two families are honoured in every layer: the OCI/AUFS form (`.wh.<name>` files and a
//! `.wh..wh..opq` marker, as tar layers and DUCC `layerfs` dirs hold them) and the kernel
//! overlayfs form (a 0:0 character device named `<name>`, an `opaque` xattr).
//! This module is the one place that spells them; the mount, the flat builder and the
//! unpacker all ask it.

/// Prefix of OCI/AUFS whiteout files.
pub const WH_PREFIX: &[u8] = b".wh.";
/// Marker file that makes its directory opaque.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The opaque xattr kernel overlayfs reads by default (needs CAP_SYS_ADMIN to write).
pub const TRUSTED_OPAQUE: &str = "trusted.overlay.opaque";
/// The opaque xattr of unprivileged overlays (`userxattr`, rootless).
pub const USER_OPAQUE: &str = "user.overlay.opaque";
/// Xattrs that mark a directory opaque when their value is `y`.
pub const OPAQUE_XATTRS: [&str; 3] = [TRUSTED_OPAQUE, USER_OPAQUE, "user.fuseoverlayfs.opaque"];

/// What a raw directory entry of a layer means for the merged view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker<'a> {
    /// An ordinary entry, visible unless hidden from above.
    Entry,
    /// `.wh.<name>`: hides `<name>` in the layers below.
    Whiteout(&'a [u8]),
    /// `.wh..wh..opq`: hides the whole directory content below.
    Opaque,
    /// Any other `.wh.`-prefixed AUFS metadata (`.wh..wh.plnk` …), and CernVM-FS catalog
    /// markers: never shown.
    Internal,
}

/// Classify an entry name. Char-device whiteouts need the stat and are checked by
/// [`is_char_whiteout`].
/// CernVM-FS nested-catalog markers count as internal too: repository structure that
/// publishing needs in every layer directory, never image content.
pub fn classify(name: &[u8]) -> Marker<'_> {
    match name.strip_prefix(WH_PREFIX) {
        None if super::cvmfs::is_catalog_marker(name) => Marker::Internal,
        None => Marker::Entry,
        Some(_) if name == OPAQUE_MARKER => Marker::Opaque,
        Some(rest) if rest.starts_with(WH_PREFIX) || rest.is_empty() => Marker::Internal,
        Some(rest) => Marker::Whiteout(rest),
    }
}

/// Longest name a directory entry may have (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// The OCI whiteout name for `name`; `None` when the prefix would make it longer than
/// NAME_MAX, so that no such whiteout can exist (names of 252-255 bytes): callers treat that
/// as "no whiteout", never as an error.
pub fn whiteout_name(name: &[u8]) -> Option<Vec<u8>> {
    if WH_PREFIX.len() + name.len() > NAME_MAX {
        return None;
    }
    let mut v = Vec::with_capacity(WH_PREFIX.len() + name.len());
    v.extend_from_slice(WH_PREFIX);
    v.extend_from_slice(name);
    Some(v)
}

/// Whether `name` is one of the opaque-marking xattrs.
pub fn is_opaque_xattr(name: &[u8]) -> bool {
    OPAQUE_XATTRS.iter().any(|x| x.as_bytes() == name)
}

/// Kernel overlayfs whiteout: a character device with device number 0:0.
pub fn is_char_whiteout(mode: u32, rdev: u64) -> bool {
    mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0
}

/// Whether an opaque xattr value means "opaque" (`y`; the kernel's `x` means "has whiteouts").
pub fn is_opaque_value(value: &[u8]) -> bool {
    value == b"y"
}

/// Overlay-internal xattrs, hidden from the merged view like kernel overlayfs hides its own.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_forms() {
        assert_eq!(classify(b"etc"), Marker::Entry);
        assert_eq!(classify(b".wh.etc"), Marker::Whiteout(b"etc"));
        assert_eq!(classify(b".wh..wh..opq"), Marker::Opaque);
        assert_eq!(classify(b".wh..wh.plnk"), Marker::Internal);
        assert_eq!(classify(b".wh."), Marker::Internal);
        assert_eq!(classify(b".whx"), Marker::Entry);
        assert_eq!(classify(b".cvmfscatalog"), Marker::Internal);
        assert_eq!(classify(b".wh.a.wh.b"), Marker::Whiteout(b"a.wh.b"));
    }

    #[test]
    fn long_names_have_no_whiteout() {
        assert_eq!(whiteout_name(b"a").unwrap(), b".wh.a");
        assert!(whiteout_name(&[b'a'; 251]).is_some());
        assert!(whiteout_name(&[b'a'; 252]).is_none());
    }

    #[test]
    fn char_whiteout() {
        assert!(is_char_whiteout(libc::S_IFCHR | 0o600, 0));
        assert!(!is_char_whiteout(
            libc::S_IFCHR | 0o600,
            libc::makedev(1, 3)
        ));
        assert!(!is_char_whiteout(libc::S_IFREG, 0));
    }

    #[test]
    fn internal_xattrs() {
        assert!(is_internal_xattr(b"trusted.overlay.opaque"));
        assert!(is_internal_xattr(b"user.fuseoverlayfs.opaque"));
        assert!(!is_internal_xattr(b"user.foo"));
        assert!(!is_internal_xattr(b"security.capability"));
    }
}
