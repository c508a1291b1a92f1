//! Layers read through a CernVM-FS client mount, and what the client adds that is not image
//! content: catalog markers, its own "magic" `user.*` xattrs, and, with
//! `CVMFS_CLAIM_OWNERSHIP=yes` (the client's default), every entry owned by the client's own
//! account instead of the owner the repository holds.

use std::io;
use std::os::fd::BorrowedFd;

/// The file that makes its directory a nested catalog when published (`convert` writes it).
pub const CATALOG_MARKER: &str = ".cvmfscatalog";

/// Files that mark nested catalogs in a published tree: repository structure, never image
/// content, so no layer shows them.
pub const CATALOG_MARKERS: [&[u8]; 2] = [CATALOG_MARKER.as_bytes(), b".cvmfsautocatalog"];

/// Whether `name` is a nested-catalog marker.
pub fn is_catalog_marker(name: &[u8]) -> bool {
    CATALOG_MARKERS.contains(&name)
}

/// The client's magic xattrs (CernVM-FS 2.12): answered for any path, describing the client,
/// not the file. 2.12 hides them from listxattr by default but still answers getxattr.
const MAGIC_XATTRS: &[&str] = &[
    "authz",
    "catalog_counters",
    "chunk_list",
    "chunks",
    "compression",
    "direct_io",
    "expires",
    "external_file",
    "external_host",
    "external_timeout",
    "fqrn",
    "hash",
    "host",
    "host_list",
    "hitrate",
    "inode_max",
    "lhash",
    "logbuffer",
    "maxfd",
    "ncleanup24",
    "nclg",
    "ndiropen",
    "ndownload",
    "nioerr",
    "nopen",
    "pid",
    "proxy",
    "proxy_list",
    "pubkeys",
    "rawlink",
    "repo_counters",
    "repo_metainfo",
    "revision",
    "root_hash",
    "rx",
    "speed",
    "tag",
    "timeout",
    "timeout_direct",
    "timestamp_last_ioerr",
    "uptime",
    "usedfd",
    "useddirp",
    "version",
];

/// Whether `name` is one of the client's magic xattrs.
pub fn is_magic_xattr(name: &[u8]) -> bool {
    name.strip_prefix(b"user.")
        .is_some_and(|n| MAGIC_XATTRS.iter().any(|m| m.as_bytes() == n))
}

/// What a layer root on a CernVM-FS client tells about that client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Fully qualified repository name (`unpacked.cern.ch`).
    pub fqrn: String,
    /// The client's uid and gid when it claims ownership of every entry; the repository's
    /// owners are then unknown and presented as root (what image files almost always are).
    pub claimed: Option<(u32, u32)>,
    /// Seed of this layer's inode numbers (see [`Client::ino`]).
    pub ino_seed: u64,
}

/// FNV-1a, 64 bits: stable across runs and versions, unlike std's hasher.
fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(seed, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

impl Client {
    /// The inode number of the entry at `rel`: derived from the layer and the path, because
    /// the client numbers inodes afresh when it loads a new revision (a number seen before
    /// may then name another file), and publishing has split hard links anyway.
    pub fn ino(&self, rel: &[u8]) -> u64 {
        // Kept below 2^48 so that stacks over several filesystems can still tell them apart.
        (fnv(self.ino_seed, rel) & ((1 << 48) - 1)).max(2)
    }

    /// The owner to present for an owner read from this client.
    pub fn owner(&self, uid: u32, gid: u32) -> (u32, u32) {
        match self.claimed {
            Some((cu, cg)) => (
                if uid == cu { 0 } else { uid },
                if gid == cg { 0 } else { gid },
            ),
            None => (uid, gid),
        }
    }
}

fn fgetxattr_string(fd: BorrowedFd<'_>, name: &str) -> Option<String> {
    let mut buf = [0u8; 256];
    let n = rustix::fs::fgetxattr(fd, name, &mut buf[..]).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// Recognise a CernVM-FS client under the directory `root`, opened from `layer_path` (one
/// getxattr on any other filesystem). `root_owner` is its (uid, gid) as the client reports it.
pub fn detect(
    root: BorrowedFd<'_>,
    layer_path: &std::path::Path,
    root_owner: (u32, u32),
) -> Option<Client> {
    let fqrn = fgetxattr_string(root, "user.fqrn")?;
    if fqrn.is_empty() {
        return None;
    }
    // Only a FUSE filesystem can be the client: on a local disk anyone who can write the layer
    // could set `user.fqrn` (and `user.hash`, which verification trusts on a client).
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    // f_type's width differs between platforms.
    #[allow(clippy::unnecessary_cast)]
    let fs_type = rustix::fs::fstatfs(root).map(|s| s.f_type as i64);
    if fs_type != Ok(FUSE_SUPER_MAGIC) {
        tracing::warn!(layer = %layer_path.display(), "user.fqrn on a filesystem that is not FUSE: not a CernVM-FS client");
        return None;
    }
    Some(Client {
        claimed: claimed_owner(root, root_owner).ok().flatten(),
        ino_seed: fnv(
            0xcbf2_9ce4_8422_2325,
            layer_path.as_os_str().as_encoded_bytes(),
        ),
        fqrn,
    })
}

/// The client's own uid and gid when it reports them for `root`: claimed ownership. The client
/// process (its pid is a magic xattr) runs as an unprivileged account, so a root that this
/// account owns is claimed, not published (publishing runs as root).
fn claimed_owner(root: BorrowedFd<'_>, root_owner: (u32, u32)) -> io::Result<Option<(u32, u32)>> {
    let Some(pid) = fgetxattr_string(root, "user.pid") else {
        return Ok(None);
    };
    let proc_dir = rustix::fs::stat(format!("/proc/{pid}").as_str())?;
    let account = (proc_dir.st_uid, proc_dir.st_gid);
    Ok((account == root_owner && account.0 != 0).then_some(account))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_catalog_marker(b".cvmfscatalog"));
        assert!(!is_catalog_marker(b"cvmfscatalog"));
        assert!(is_magic_xattr(b"user.fqrn"));
        assert!(is_magic_xattr(b"user.pid"));
        assert!(!is_magic_xattr(b"user.mime_type"));
        assert!(!is_magic_xattr(b"security.capability"));
    }

    #[test]
    fn claimed_owners_become_root() {
        let c = Client {
            fqrn: "x".into(),
            claimed: Some((999, 995)),
            ino_seed: 1,
        };
        assert_eq!(c.owner(999, 995), (0, 0));
        assert_eq!(c.owner(1000, 995), (1000, 0));
        let n = Client { claimed: None, ..c };
        assert_eq!(n.owner(999, 995), (999, 995));
    }

    #[test]
    fn inode_numbers_follow_layer_and_path() {
        let c = |seed| Client {
            fqrn: "x".into(),
            claimed: None,
            ino_seed: seed,
        };
        assert_eq!(c(1).ino(b"etc/passwd"), c(1).ino(b"etc/passwd"));
        assert_ne!(c(1).ino(b"etc/passwd"), c(1).ino(b"etc/group"));
        assert_ne!(c(1).ino(b"etc/passwd"), c(2).ino(b"etc/passwd"));
        assert!(c(1).ino(b"") < 1 << 48);
    }

    #[test]
    fn local_directories_are_not_clients() {
        let t = tempfile::tempdir().unwrap();
        let d = std::fs::File::open(t.path()).unwrap();
        use std::os::fd::AsFd;
        assert_eq!(detect(d.as_fd(), t.path(), (0, 0)), None);
    }
}
