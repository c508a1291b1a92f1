//! The thin FUSE adapter: maps fuser requests onto [`Overlay`] and tells the kernel how much it
//! may cache. Lower layers never change while mounted, so entries, attributes, pages and
//! directory listings are cached by the kernel for as long as it likes.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use std::num::NonZeroUsize;

use super::stats::{Op, Stats, Timer};

use dashmap::DashMap;
use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use lru::LruCache;
use parking_lot::Mutex;
use tracing::{debug, info};

use crate::overlay::Overlay;
use crate::overlay::inode::Attr;
use crate::overlay::readdir::{Bare, PlusEntry};
use crate::overlay::write::{Caller, NewEntry, SetAttr, SetTime};

/// How long the kernel may trust what we told it: the lower layers are immutable, and every
/// change of the writable layer goes through us, so the kernel's caches stay exact.
pub const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Whether to hand reads to the kernel through FUSE passthrough.
///
/// Off by default, as measured (benches/RESULTS.md): passthrough needs an OPEN round trip per
/// open(2), and registering the backing file made a warm pass over 100,000 small files 8x
/// slower than zero-message opens, which serve warm opens from the kernel with no round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    /// Use it when the kernel offers it and we may (root); otherwise fall back silently.
    On,
    Off,
}

pub(super) struct Handle {
    pub(super) ino: u64,
    pub(super) fd: Arc<OwnedFd>,
    pub(super) passthrough: bool,
    pub(super) writable: bool,
}

/// The kernel's backing file of one inode. Every passthrough open of an inode must name the
/// same backing file (a second one is refused with EIO), so it is shared and counted.
struct Backing {
    id: BackingId,
    fd: Arc<OwnedFd>,
    opens: usize,
}

/// Backing files by inode: those open, and recently closed ones kept so that the next open
/// of the same file costs no open(2) and no registration.
struct Backings {
    live: HashMap<u64, Backing>,
    /// Inodes in `live` with no open handle, least recently used first out.
    idle: LruCache<u64, ()>,
}

/// How many closed files keep their backing registration.
const IDLE_BACKINGS: usize = 1024;

impl Backings {
    fn release(&mut self, ino: u64) {
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

/// The fuser session's filesystem and, with `-o io_uring`, the ring queues' too: a cheap
/// handle on one shared state.
#[derive(Clone)]
pub struct StrataFs(Arc<Shared>);

impl std::ops::Deref for StrataFs {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub(super) ov: Arc<Overlay>,
    /// Set once the session exists: tells the kernel what a copy-up made stale.
    notifier: Arc<OnceLock<fuser::Notifier>>,
    passthrough: Passthrough,
    /// Set in init: OPEN is answered (for passthrough) instead of declined.
    handle_opens: AtomicBool,
    pub(super) handles: DashMap<u64, Handle>,
    backings: Mutex<Backings>,
    pub(super) next_fh: AtomicU64,
    /// Files read, for `stratafs report`.
    access: Option<Arc<crate::mount::access::AccessLog>>,
    /// Requests by opcode, for `-o stats=FILE`.
    stats: Option<Arc<Stats>>,
    /// Ask for the kernel's writeback cache on a writable mount.
    writeback: bool,
    /// Whether ring READDIRPLUS replies may leave attributes out (`readdirplus=`).
    bare: Bare,
    /// Rings made before INIT (`-o io_uring`); still here after INIT if the kernel agreed
    /// to use them, until [`StrataFs::start_io_uring`].
    uring: Mutex<Option<crate::mount::uring::Rings>>,
}

impl StrataFs {
    /// Record every file read in `log`.
    pub fn with_access_log(
        mut self,
        log: Option<Arc<crate::mount::access::AccessLog>>,
    ) -> StrataFs {
        self.configure().access = log;
        self
    }

    /// Settings are made before the session shares the state.
    fn configure(&mut self) -> &mut Shared {
        Arc::get_mut(&mut self.0).expect("configured before the session starts")
    }

    /// Offer `rings` to the kernel at INIT.
    pub fn with_io_uring(mut self, rings: Option<crate::mount::uring::Rings>) -> StrataFs {
        self.configure().uring = Mutex::new(rings);
        self
    }

    /// After the handshake: serve the rings the kernel agreed to at INIT, on `dev` (the
    /// session's `/dev/fuse`). Until every queue is registered the kernel holds requests
    /// back, so a mount that cannot serve them ends here rather than hang.
    pub fn start_io_uring(&self, dev: std::os::fd::BorrowedFd<'_>) {
        let Some(rings) = self.uring.lock().take() else {
            return;
        };
        match dev.try_clone_to_owned() {
            Ok(dev) => rings.start(dev, self.clone()),
            Err(e) => {
                tracing::error!("io_uring: /dev/fuse: {e}; ending the mount");
                std::process::exit(1);
            }
        }
    }

    pub fn new(
        ov: Arc<Overlay>,
        passthrough: Passthrough,
        notifier: Arc<OnceLock<fuser::Notifier>>,
    ) -> StrataFs {
        StrataFs(Arc::new(Shared {
            ov,
            notifier,
            passthrough,
            handle_opens: AtomicBool::new(false),
            handles: DashMap::new(),
            backings: Mutex::new(Backings {
                live: HashMap::new(),
                idle: LruCache::new(NonZeroUsize::new(IDLE_BACKINGS).expect("nonzero")),
            }),
            next_fh: AtomicU64::new(1),
            access: None,
            stats: None,
            writeback: false,
            bare: Bare::Lazy,
            uring: Mutex::new(None),
        }))
    }

    /// Let the kernel cache writes (`writeback=on`).
    pub fn with_writeback(mut self, on: bool) -> StrataFs {
        self.configure().writeback = on;
        self
    }

    /// `readdirplus=full`: every READDIRPLUS entry with attributes, on the rings too.
    pub fn with_bare_entries(mut self, bare: Bare) -> StrataFs {
        self.configure().bare = bare;
        self
    }

    pub(crate) fn bare_entries(&self) -> Bare {
        self.bare
    }

    /// Count requests and their time in `stats`.
    pub fn with_stats(mut self, stats: Option<Arc<Stats>>) -> StrataFs {
        self.configure().stats = stats;
        self
    }

    pub(crate) fn timed(&self, op: Op) -> Option<Timer<'_>> {
        self.stats.as_ref().map(|s| s.time(op))
    }

    pub(crate) fn stats(&self) -> Option<&Stats> {
        self.stats.as_deref()
    }

    pub(crate) fn overlay(&self) -> &Overlay {
        &self.ov
    }

    /// Read from file `ino` (through handle `fh` when it has one) into `buf`, and record
    /// the read for the access log.
    pub(crate) fn read_into(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let fd = match self.handles.get(&fh) {
            Some(h) => Arc::clone(&h.fd),
            None => self.ov.cached_file(ino)?,
        };
        let n = Overlay::read_at(&fd, buf, offset)?;
        if let Some(log) = &self.access {
            log.record(ino, n, || {
                let (path, layer) = self.ov.origin(ino)?;
                Some((String::from_utf8_lossy(&path).into_owned(), layer))
            });
        }
        Ok(n)
    }

    /// Forget handle `fh` and its backing file's use.
    pub(crate) fn release_handle(&self, fh: u64) {
        if let Some((_, h)) = self.handles.remove(&fh) {
            if h.passthrough {
                self.backings.lock().release(h.ino);
            }
        }
    }
}

fn err(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time(t: (i64, u32)) -> SystemTime {
    if t.0 >= 0 {
        UNIX_EPOCH + Duration::new(t.0 as u64, t.1)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.0.unsigned_abs()) + Duration::from_nanos(t.1 as u64)
    }
}

pub fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn to_fuse(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.ctime),
        kind: file_type(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink.min(u32::MAX as u64) as u32,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: a.blksize,
        flags: 0,
    }
}

fn reply_made(r: io::Result<Attr>, reply: ReplyEntry) {
    match r {
        Ok(a) => reply.entry(&TTL, &to_fuse(&a), Generation(0)),
        Err(e) => reply.error(err(e)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}

impl Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let caps = config.capabilities();
        let mut want = InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_NO_OPENDIR_SUPPORT;
        if self.ov.writable() {
            // Opens are answered: writes need a handle, and O_TRUNC comes with the open so
            // a file about to be emptied is copied up without its content.
            want |= InitFlags::FUSE_ATOMIC_O_TRUNC;
            // We clear set-ID bits ourselves (see Overlay::kill_suidgid): without this the
            // kernel sends a GETXATTR security.capability before every write(2).
            want |= InitFlags::FUSE_HANDLE_KILLPRIV_V2;
            // POSIX ACLs take effect: the kernel checks them and leaves the umask to us, so
            // that a directory's default ACL can decide a new entry's mode (Overlay::create).
            want |= InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK;
            if self.writeback {
                want |= InitFlags::FUSE_WRITEBACK_CACHE;
            }
        } else {
            want |= InitFlags::FUSE_NO_OPEN_SUPPORT;
        }
        // Readdirplus (the kernel picks when): a listing also answers the lookups that follow.
        want |= InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        let rings = self.uring.lock().take();
        let rings = rings.filter(|_| self.ring_usable(caps));
        let root = rustix::process::geteuid().is_root();
        if self.passthrough == Passthrough::On
            && !self.ov.writable()
            && rings.is_none()
            && root
            && caps.contains(InitFlags::FUSE_PASSTHROUGH)
            && config.set_max_stack_depth(1).is_ok()
        {
            want |= InitFlags::FUSE_PASSTHROUGH;
            self.handle_opens.store(true, Ordering::Relaxed);
        }
        if rings.is_some() {
            want |= InitFlags::FUSE_OVER_IO_URING;
            // Each ring entry holds a buffer of the largest request.
            let _ = config.set_max_write(crate::mount::uring::MAX_PAYLOAD);
        }
        let _ = config.add_capabilities(want & caps);
        let _ = config.set_max_readahead(1 << 20);
        // Kept for start_io_uring, once fuser has sent this reply.
        *self.uring.lock() = rings;
        info!(
            passthrough = self.handle_opens.load(Ordering::Relaxed),
            "mount is live"
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = self.timed(Op::Lookup);
        match self.lookup_attr(parent.0, name.as_bytes()) {
            Ok(Some(a)) => reply.entry(&TTL, &to_fuse(&a), Generation(0)),
            // A negative entry the kernel may cache as long as a positive one.
            Ok(None) => reply.entry(&TTL, &negative(), Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _t = self.timed(Op::Forget);
        self.ov.forget(ino.0, nlookup);
    }

    // Not counted in the stats: fuser calls this at the end of every session, whether or not
    // the kernel sent DESTROY.
    fn destroy(&mut self) {
        debug!(live_nodes = self.ov.live_nodes(), "unmounting");
        self.ov.unmounted();
    }

    // No ioctl is served (what a regular file says to a terminal ioctl); counted, since the
    // kernel asks again every time.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let _t = self.timed(Op::Ioctl);
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = self.timed(Op::Getattr);
        match self.getattr_of(ino.0) {
            Ok(a) => reply.attr(&TTL, &to_fuse(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _t = self.timed(Op::Readlink);
        match self.ov.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.timed(Op::Open);
        if self.ov.writable() {
            match self.open_handle(ino.0, flags.0, lacks_fsetid(req)) {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => reply.error(err(e)),
            }
            return self.notify_stale();
        }
        if !self.handle_opens.load(Ordering::Relaxed) {
            // Zero-message opens: the kernel keeps the page cache and never asks again.
            return reply.error(Errno::ENOSYS);
        }
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::from_i32(libc::EROFS));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.backings.lock();
        let Backings { live, idle } = &mut *guard;
        let b = match live.entry(ino.0) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let node = match self.ov.node(ino.0) {
                    Ok(n) => n,
                    Err(e) => return reply.error(err(e)),
                };
                let fd = match self.ov.open_file(&node) {
                    Ok(fd) => Arc::new(fd),
                    Err(e) => return reply.error(err(e)),
                };
                match reply.open_backing(&*fd) {
                    Ok(id) => v.insert(Backing { id, fd, opens: 0 }),
                    Err(e) => {
                        // e.g. a layer on a stacked filesystem: serve its reads ourselves.
                        debug!(ino = ino.0, error = %e, "passthrough refused");
                        let h = Handle {
                            ino: ino.0,
                            fd,
                            passthrough: false,
                            writable: false,
                        };
                        self.handles.insert(fh, h);
                        return reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
                    }
                }
            }
        };
        idle.pop(&ino.0);
        b.opens += 1;
        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b.id);
        let h = Handle {
            ino: ino.0,
            fd: Arc::clone(&b.fd),
            passthrough: true,
            writable: false,
        };
        self.handles.insert(fh, h);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _t = self.timed(Op::Read);
        READ_BUF.with_borrow_mut(|buf| {
            buf.resize(size as usize, 0);
            match self.read_into(ino.0, fh.0, offset, &mut buf[..size as usize]) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(Op::Flush);
        // Writes go straight to the layer, so there is nothing to flush; ENOSYS makes the
        // kernel stop sending FLUSH on every close.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(Op::Release);
        self.release_handle(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.timed(Op::Opendir);
        // Zero-message opendir: the kernel then caches listings (FOPEN_CACHE_DIR).
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _t = self.timed(Op::Readdir);
        let r = self.ov.read_dir(ino.0, offset, |e| {
            reply.add(
                INodeNo(e.ino),
                e.next,
                file_type(e.kind),
                OsStr::from_bytes(e.name),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _t = self.timed(Op::Readdirplus);
        // fuser writes an entry's d_ino from its node id, so it cannot send one without
        // attributes.
        let r = self.ov.read_dir_plus(ino.0, offset, Bare::Never, |e| {
            let (attr, ttl) = match e.entry {
                PlusEntry::Linked(a) => (to_fuse(&a), TTL),
                PlusEntry::Dot(a) => (to_fuse(&a), Duration::ZERO),
                PlusEntry::Bare { .. } => unreachable!("Bare::Never"),
            };
            reply.add(
                attr.ino,
                e.next,
                OsStr::from_bytes(e.name),
                &ttl,
                &attr,
                Generation(0),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(Op::Releasedir);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _t = self.timed(Op::Statfs);
        match self.ov.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _t = self.timed(Op::Getxattr);
        match self.ov.get_xattr(ino.0, name.as_bytes()) {
            Ok(Some(v)) => reply_xattr(reply, size, &v),
            Ok(None) => reply.error(Errno::from_i32(libc::ENODATA)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = self.timed(Op::Listxattr);
        match self.ov.list_xattrs(ino.0) {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(err(e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _t = self.timed(Op::Access);
        match self.ov.access(ino.0, mask.bits(), req.uid(), req.gid()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    // ---- the writable layer ----

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _t = self.timed(Op::Write);
        let kill = write_flags
            .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            .then(|| req.gid());
        let r = self.write_handle(ino.0, fh.0, offset, data, kill);
        self.notify_stale();
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(err(e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(Op::Fsync);
        match self.fsync_handle(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(Op::Fsyncdir);
        reply.ok();
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(Op::Fallocate);
        let r = self.fallocate_handle(ino.0, fh.0, (offset, length, mode), lacks_fsetid(req));
        self.notify_stale();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _t = self.timed(Op::Setattr);
        let sa = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            kill_suidgid: lacks_fsetid(req),
        };
        match self.set_attr(ino.0, &sa, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&TTL, &to_fuse(&a)),
            Err(e) => reply.error(err(e)),
        }
        self.notify_stale();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _t = self.timed(Op::Create);
        let open = super::requests::create_open_flags(flags as u32);
        let who = caller_with_umask(req, umask);
        match self.create_file(parent.0, name.as_bytes(), mode, who) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &to_fuse(&attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::from_bits_retain(open),
            ),
            Err(e) => reply.error(err(e)),
        }
        self.notify_stale();
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _t = self.timed(Op::Mkdir);
        let who = caller_with_umask(req, umask);
        let r = self.make(parent.0, name.as_bytes(), NewEntry::Dir, mode, who);
        reply_made(r, reply);
        self.notify_stale();
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _t = self.timed(Op::Mknod);
        let what = if mode & libc::S_IFMT == libc::S_IFREG {
            NewEntry::File
        } else {
            NewEntry::Node(rdev as u64)
        };
        let who = caller_with_umask(req, umask);
        reply_made(self.make(parent.0, name.as_bytes(), what, mode, who), reply);
        self.notify_stale();
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let _t = self.timed(Op::Symlink);
        let what = NewEntry::Symlink(target.as_os_str().as_bytes());
        let (name, mode) = (link_name.as_bytes(), libc::S_IFLNK | 0o777);
        reply_made(self.make(parent.0, name, what, mode, caller(req)), reply);
        self.notify_stale();
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _t = self.timed(Op::Link);
        reply_made(
            self.hard_link(ino.0, newparent.0, newname.as_bytes()),
            reply,
        );
        self.notify_stale();
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.timed(Op::Unlink);
        match self.ov.remove(parent.0, name.as_bytes(), false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
        self.notify_stale();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.timed(Op::Rmdir);
        match self.ov.remove(parent.0, name.as_bytes(), true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
        self.notify_stale();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(Op::Rename);
        let from = (parent.0, name.as_bytes());
        match self.rename_entry(from, (newparent.0, newname.as_bytes()), flags.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
        self.notify_stale();
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _t = self.timed(Op::Setxattr);
        let who = (req.uid(), req.gid(), req.pid());
        match self.set_xattr(ino.0, (name.as_bytes(), value, flags), who) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
        self.notify_stale();
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.timed(Op::Removexattr);
        match self.remove_xattr(ino.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
        self.notify_stale();
    }
}

impl StrataFs {
    /// Whether this mount can be served through the rings; says why not otherwise.
    fn ring_usable(&self, caps: InitFlags) -> bool {
        let why_not = if !caps.contains(InitFlags::FUSE_OVER_IO_URING) {
            "the kernel does not offer it (/sys/module/fuse/parameters/enable_uring is N)"
        } else {
            return true;
        };
        info!("io_uring not used: {why_not}; serving through /dev/fuse");
        false
    }

    /// After a reply: invalidate what the request made stale in the kernel's caches.
    pub(crate) fn notify_stale(&self) {
        self.notify(self.ov.take_stale());
    }

    /// Tell the kernel what `stale` names.
    pub(crate) fn notify(&self, stale: crate::overlay::namespace::Stale) {
        let Some(n) = self.notifier.get() else { return };
        for ino in stale.inodes {
            let _ = n.inval_inode(INodeNo(ino), -1, 0);
        }
        for (parent, name) in stale.entries {
            let _ = n.inval_entry(INodeNo(parent), OsStr::from_bytes(&name));
        }
    }
}

fn lacks_fsetid(req: &Request) -> Option<u32> {
    super::requests::lacks_fsetid(req.uid(), req.gid())
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        umask: 0,
    }
}

fn caller_with_umask(req: &Request, umask: u32) -> Caller {
    Caller {
        umask,
        ..caller(req)
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
                if n == 0 {
                    SetTime::At(-s, 0)
                } else {
                    SetTime::At(-s - 1, 1_000_000_000 - n)
                }
            }
        },
    }
}

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn negative() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}
