//! The node's memory of content already checked, shared by every mount of one user (a
//! memory-mapped table in a file), so that a file is hashed once per node, not once per
//! mount or container.
//!
//! A slot holds 16 bytes of SHA-256 over (the file's identity, the block, the expected
//! digest). The identity is what changes when the file does: on a local disk the device,
//! inode, generation (`FS_IOC_GETVERSION`), size, mtime and ctime, taken from the descriptor
//! that was read, before and after; on a CernVM-FS client its content hash (`user.hash`),
//! since inode numbers change across catalog reloads. A file whose ctime is within two
//! seconds of the check is not remembered (it may change again within the timestamps'
//! granularity: git's "racily clean" rule).
//!
//! Whoever can write the table can make a mount skip checks: it lives in the user's own
//! cache directory, and is refused when someone else owns it or can write it.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

/// Slots in the table: 16 MiB, sparse until used.
const SLOTS: usize = 1 << 20;
/// Slots probed per key.
const PROBE: usize = 8;

/// What a file is, as far as its content goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity([u8; 32]);

/// `FS_IOC_GETVERSION`: `_IOR('v', 1, long)`.
const FS_IOC_GETVERSION: libc::c_ulong = 0x8008_7601;

impl Identity {
    /// The identity of the open file `fd`, and whether it changed too recently to be
    /// remembered.
    pub fn of(fd: &OwnedFd, cvmfs: bool) -> io::Result<(Identity, bool)> {
        let st = rustix::fs::statx(
            fd.as_fd(),
            "",
            rustix::fs::AtFlags::EMPTY_PATH,
            rustix::fs::StatxFlags::BASIC_STATS,
        )?;
        let mut h = Sha256::new();
        if cvmfs {
            let name = c"user.hash";
            // A chunked file may have no whole-file hash: then it is known by its inode.
            let hash = crate::stack::layer::get_xattr_fd(fd.as_fd(), name)?.filter(|v| {
                v.len() >= 40 && v.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            });
            if let Some(v) = hash {
                h.update(b"cvmfs\0");
                h.update(&v);
                h.update(st.stx_size.to_le_bytes());
                return Ok((Identity(h.finalize().into()), false));
            }
        }
        let mut generation: libc::c_long = 0;
        // SAFETY: FS_IOC_GETVERSION writes one long to the pointer; a filesystem without it
        // answers ENOTTY and writes nothing (then 0 stands for it).
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETVERSION, &mut generation) };
        if r != 0 {
            generation = 0;
        }
        h.update(b"local\0");
        for v in [
            st.stx_dev_major as u64,
            st.stx_dev_minor as u64,
            st.stx_ino,
            generation as u64,
            st.stx_size,
            st.stx_mtime.tv_sec as u64,
            st.stx_mtime.tv_nsec as u64,
            st.stx_ctime.tv_sec as u64,
            st.stx_ctime.tv_nsec as u64,
        ] {
            h.update(v.to_le_bytes());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let racy = st.stx_ctime.tv_sec >= now - 2;
        Ok((Identity(h.finalize().into()), racy))
    }

    /// The table's key for block `b` of this file holding `digest`.
    pub fn key(&self, b: u64, digest: &[u8; 32]) -> [u64; 2] {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(b.to_le_bytes());
        h.update(digest);
        let d = h.finalize();
        let w = |i: usize| u64::from_le_bytes(d[i..i + 8].try_into().expect("8 bytes"));
        // 0:0 marks an empty slot.
        [w(0) | 1, w(8)]
    }
}

/// Why the node's table cannot be used (the mount goes on without it).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: owned by uid {uid} or writable by others: not trusted")]
    Untrusted { path: PathBuf, uid: u32 },
}

pub struct VerifiedCache {
    map: memmap2::MmapMut,
    pub path: PathBuf,
}

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("path", &self.path)
            .finish()
    }
}

impl VerifiedCache {
    /// Where a user's table lives: under /var/cache for root, else the XDG cache directory.
    pub fn default_path() -> Option<PathBuf> {
        if rustix::process::geteuid().is_root() {
            return Some(PathBuf::from("/var/cache/stratafs/verified"));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
        Some(base.join("stratafs/verified"))
    }

    /// Open (or make) the table at `path`.
    pub fn open(path: &Path) -> Result<VerifiedCache, CacheError> {
        let io_err = |source| CacheError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err)?;
        let md = f.metadata().map_err(io_err)?;
        if md.uid() != rustix::process::geteuid().as_raw() || md.mode() & 0o022 != 0 {
            return Err(CacheError::Untrusted {
                path: path.into(),
                uid: md.uid(),
            });
        }
        let len = (SLOTS * 16) as u64;
        if md.len() < len {
            f.set_len(len).map_err(io_err)?;
        }
        // SAFETY: shared with other mounts of this user, which touch it only through the
        // atomic words below; a torn pair of words matches no key.
        let map =
            unsafe { memmap2::MmapOptions::new().len(len as usize).map_mut(&f) }.map_err(io_err)?;
        // Every lookup lands on a random page: after the page cache was dropped, one disk
        // read each. Have the kernel read the table ahead at once (holes cost nothing).
        let _ = map.advise(memmap2::Advice::WillNeed);
        Ok(VerifiedCache {
            map,
            path: path.into(),
        })
    }

    fn words(&self) -> &[AtomicU64] {
        let p = self.map.as_ptr() as *const AtomicU64;
        // SAFETY: the map is SLOTS * 16 bytes, page-aligned, and lives as long as `self`;
        // AtomicU64 has the size and alignment of u64.
        unsafe { std::slice::from_raw_parts(p, SLOTS * 2) }
    }

    fn slots(key: &[u64; 2]) -> impl Iterator<Item = usize> {
        let start = (key[1] as usize) % SLOTS;
        (0..PROBE).map(move |i| (start + i) % SLOTS)
    }

    pub fn contains(&self, key: &[u64; 2]) -> bool {
        let w = self.words();
        Self::slots(key).any(|s| {
            w[2 * s].load(Ordering::Acquire) == key[0]
                && w[2 * s + 1].load(Ordering::Acquire) == key[1]
        })
    }

    pub fn insert(&self, key: &[u64; 2]) {
        let w = self.words();
        let slot = Self::slots(key)
            .find(|&s| {
                let k0 = w[2 * s].load(Ordering::Relaxed);
                k0 == 0 || (k0 == key[0] && w[2 * s + 1].load(Ordering::Relaxed) == key[1])
            })
            // Full: evict the slot the key's high bits pick.
            .unwrap_or_else(|| Self::slots(key).nth((key[0] >> 61) as usize).expect("8"));
        w[2 * slot + 1].store(key[1], Ordering::Release);
        w[2 * slot].store(key[0], Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_remembered_across_openers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c/verified");
        let a = VerifiedCache::open(&p).unwrap();
        let b = VerifiedCache::open(&p).unwrap();
        let k = [7u64 | 1, 99];
        assert!(!b.contains(&k));
        a.insert(&k);
        assert!(b.contains(&k));
        // More keys on one probe window than it has slots: the table stays usable.
        for i in 0..20u64 {
            a.insert(&[(i << 3) | 1, 99]);
        }
        assert!(a.contains(&[(19 << 3) | 1, 99]));
    }

    #[test]
    fn a_table_others_can_write_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("verified");
        drop(VerifiedCache::open(&p).unwrap());
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
        assert!(matches!(
            VerifiedCache::open(&p),
            Err(CacheError::Untrusted { .. })
        ));
    }

    #[test]
    fn an_identity_changes_with_the_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let fd: OwnedFd = std::fs::File::open(&p).unwrap().into();
        let (a, racy) = Identity::of(&fd, false).unwrap();
        assert!(racy, "a file changed just now is not remembered");
        std::fs::write(&p, b"two").unwrap();
        let (b, _) = Identity::of(&fd, false).unwrap();
        assert_ne!(a, b);
    }
}
