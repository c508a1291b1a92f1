//! FUSE passthrough (read-only mounts, root, `passthrough=on`): an OPEN names a backing file
//! the kernel then reads from itself. Every passthrough open of an inode must name the same
//! backing file (a second one is refused with EIO), so registrations are shared and counted,
//! and recently closed ones are kept so that the next open of the same file costs no open(2)
//! and no registration.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use lru::LruCache;
use tracing::debug;

use super::{Handle, Session};
use crate::mount::wire::{self, Out};

/// `FUSE_DEV_IOC_BACKING_OPEN`: `_IOW(229, 1, struct fuse_backing_map)` (16 bytes).
const IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

/// How many closed files keep their backing registration.
const IDLE_BACKINGS: usize = 1024;

/// A backing file registered with the connection; unregistered when dropped.
struct BackingId {
    id: i32,
    dev: Arc<OwnedFd>,
}

impl BackingId {
    fn open(dev: &Arc<OwnedFd>, file: BorrowedFd<'_>) -> io::Result<BackingId> {
        // struct fuse_backing_map { int32_t fd; uint32_t flags; uint64_t padding; }
        let map: [u32; 4] = [file.as_raw_fd() as u32, 0, 0, 0];
        // SAFETY: the ioctl reads 16 bytes from `map`, which lives across the call.
        let id = unsafe { libc::ioctl(dev.as_raw_fd(), IOC_BACKING_OPEN, map.as_ptr()) };
        if id < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(BackingId {
            id,
            dev: Arc::clone(dev),
        })
    }
}

impl Drop for BackingId {
    fn drop(&mut self) {
        let id = self.id as u32;
        // SAFETY: the ioctl reads the 4-byte id.
        unsafe { libc::ioctl(self.dev.as_raw_fd(), IOC_BACKING_CLOSE, &id) };
    }
}

struct Backing {
    id: BackingId,
    fd: Arc<OwnedFd>,
    opens: usize,
}

/// Backing files by inode: those open, and recently closed ones.
pub(super) struct Backings {
    live: HashMap<u64, Backing>,
    /// Inodes in `live` with no open handle, least recently used first out.
    idle: LruCache<u64, ()>,
}

impl Backings {
    pub(super) fn new() -> Backings {
        Backings {
            live: HashMap::new(),
            idle: LruCache::new(NonZeroUsize::new(IDLE_BACKINGS).expect("nonzero")),
        }
    }

    pub(super) fn release(&mut self, ino: u64) {
        let Some(b) = self.live.get_mut(&ino) else {
            return;
        };
        b.opens -= 1;
        if b.opens == 0 {
            if let Some((old, ())) = self.idle.push(ino, ()) {
                if old != ino {
                    self.live.remove(&old);
                }
            }
        }
    }
}

impl Session {
    /// OPEN on a read-only mount that negotiated passthrough.
    pub(super) fn open_passthrough(
        &self,
        ino: u64,
        flags: u32,
        out: &mut Out<'_>,
    ) -> Result<(), i32> {
        if flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
            return Err(libc::EROFS);
        }
        let errno = |e: io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.backings.lock();
        let Backings { live, idle } = &mut *guard;
        let b = match live.entry(ino) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let node = self.ov.node(ino).map_err(errno)?;
                let fd = Arc::new(self.ov.open_file(&node).map_err(errno)?);
                // A file checked block by block as it is read (verify=on) is served by us.
                let backing = match self.ov.may_pass_through(&node) {
                    true => BackingId::open(&self.dev, std::os::fd::AsFd::as_fd(&*fd)),
                    false => Err(io::Error::other("blocks still to be verified")),
                };
                match backing {
                    Ok(id) => v.insert(Backing { id, fd, opens: 0 }),
                    Err(e) => {
                        // e.g. a layer on a stacked filesystem: serve its reads ourselves.
                        debug!(ino, error = %e, "passthrough refused");
                        let h = Handle {
                            ino,
                            fd,
                            passthrough: false,
                            writable: false,
                        };
                        self.handles.insert(fh, h);
                        out.open_out(fh, wire::FOPEN_KEEP_CACHE);
                        return Ok(());
                    }
                }
            }
        };
        idle.pop(&ino);
        b.opens += 1;
        out.open_backing(fh, wire::FOPEN_PASSTHROUGH, b.id.id);
        let h = Handle {
            ino,
            fd: Arc::clone(&b.fd),
            passthrough: true,
            writable: false,
        };
        self.handles.insert(fh, h);
        Ok(())
    }
}
