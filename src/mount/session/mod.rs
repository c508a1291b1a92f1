//! One FUSE session, whatever carries its requests: the state a mount serves from (the
//! overlay, open handles, passthrough backing files, statistics), the answer to every opcode
//! ([`answer`]), INIT ([`init`]) and the notifications that keep the kernel's caches exact.
//! The transports (`/dev/fuse` in [`crate::mount::devfuse`], io_uring in
//! [`crate::mount::uring`]) only move bytes: both hand a request's header, fixed argument and
//! data to [`Session::serve`] and send what it wrote.
//!
//! Lower layers never change while mounted, so entries, attributes, pages and directory
//! listings are cached by the kernel for as long as it likes.

mod answer;
mod backing;
pub mod init;
mod requests;
mod resume;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Once};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use tracing::{debug, error};

use super::metrics::page::Scalar;
use super::stats::{Op, Stats, Timer};
use super::wire::{self, InHeader, Out};
use crate::overlay::Overlay;
use crate::overlay::namespace::Stale;
use crate::overlay::prefetch::State;
use crate::overlay::readdir::Bare;

pub(crate) use requests::create_open_flags;

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

/// Who may use the mount besides what the kernel already checks (`allow_root`: the kernel
/// is told `allow_other`, and the others are refused here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acl {
    All,
    RootAndOwner,
    Owner,
}

struct Handle {
    ino: u64,
    fd: Arc<OwnedFd>,
    passthrough: bool,
    writable: bool,
}

/// What a request's answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Success with this many bytes written into the reply buffer.
    Data(usize),
    /// An errno.
    Error(i32),
    /// No reply at all (FORGET, BATCH_FORGET).
    None,
}

/// A cheap handle on one shared state, for every transport thread.
#[derive(Clone)]
pub struct Session(Arc<Shared>);

impl std::ops::Deref for Session {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    ov: Arc<Overlay>,
    /// The connection's `/dev/fuse`: notifications and passthrough registrations go there.
    dev: Arc<OwnedFd>,
    passthrough: Passthrough,
    acl: Acl,
    /// The uid the mount belongs to (the ACL's owner).
    owner: u32,
    /// Set at INIT: OPEN is answered (for passthrough) instead of declined.
    handle_opens: AtomicBool,
    handles: DashMap<u64, Handle>,
    backings: Mutex<backing::Backings>,
    next_fh: AtomicU64,
    /// Files read, for `stratafs report`.
    access: Option<Arc<crate::mount::access::AccessLog>>,
    /// Requests by opcode and what they read: the mount's metrics and `-o stats=FILE`.
    stats: Option<Arc<Stats>>,
    /// The prefetch, once started: a file's first read counts as its hit or miss.
    prefetch: std::sync::OnceLock<Arc<crate::overlay::prefetch::Prefetcher>>,
    /// Ask for the kernel's writeback cache on a writable mount.
    writeback: bool,
    /// Whether READDIRPLUS replies may leave attributes out (`readdirplus=`).
    bare: Bare,
    unmounted: Once,
    /// The notifier thread's queue, once started.
    notifier: std::sync::OnceLock<crossbeam_channel::Sender<Stale>>,
    /// What the kernel knows, kept for a server that takes over (`failover`).
    journal: Option<Arc<crate::mount::journal::Journal>>,
    /// Node ids an earlier server gave out, not taken up yet: (parent, name).
    adoptable: DashMap<u64, (u64, Box<[u8]>)>,
    /// Handles an earlier server gave out, not opened again yet: (node, flags).
    reopenable: DashMap<u64, (u64, u32)>,
}

impl Session {
    /// A session serving `ov` on the connection `dev`.
    pub fn new(ov: Arc<Overlay>, dev: Arc<OwnedFd>, passthrough: Passthrough) -> Session {
        Session(Arc::new(Shared {
            ov,
            dev,
            passthrough,
            acl: Acl::All,
            owner: rustix::process::geteuid().as_raw(),
            handle_opens: AtomicBool::new(false),
            handles: DashMap::new(),
            backings: Mutex::new(backing::Backings::new()),
            next_fh: AtomicU64::new(1),
            access: None,
            stats: None,
            prefetch: std::sync::OnceLock::new(),
            writeback: false,
            bare: Bare::Lazy,
            unmounted: Once::new(),
            notifier: std::sync::OnceLock::new(),
            journal: None,
            adoptable: DashMap::new(),
            reopenable: DashMap::new(),
        }))
    }

    /// Settings are made before the transports share the state.
    fn configure(&mut self) -> &mut Shared {
        Arc::get_mut(&mut self.0).expect("configured before the session starts")
    }

    /// Record every file read in `log`.
    pub fn with_access_log(mut self, log: Option<Arc<crate::mount::access::AccessLog>>) -> Self {
        self.configure().access = log;
        self
    }

    /// Let the kernel cache writes (`writeback=on`).
    pub fn with_writeback(mut self, on: bool) -> Session {
        self.configure().writeback = on;
        self
    }

    /// `readdirplus=full`: every READDIRPLUS entry with attributes.
    pub fn with_bare_entries(mut self, bare: Bare) -> Session {
        self.configure().bare = bare;
        self
    }

    /// Refuse requests the ACL does not allow.
    pub fn with_acl(mut self, acl: Acl) -> Session {
        self.configure().acl = acl;
        self
    }

    /// Count requests and their time in `stats`, and what the overlay does.
    pub fn with_stats(mut self, stats: Option<Arc<Stats>>) -> Session {
        if let Some(s) = &stats {
            self.ov
                .set_tally(Arc::clone(s) as Arc<dyn crate::overlay::Tally>);
        }
        self.configure().stats = stats;
        self
    }

    /// The prefetch started: first reads count as its hits or misses.
    pub fn set_prefetch(&self, p: Arc<crate::overlay::prefetch::Prefetcher>) {
        let _ = self.prefetch.set(p);
    }

    pub(crate) fn timed(&self, op: Op) -> Option<Timer<'_>> {
        self.stats.as_ref().map(|s| s.time(op))
    }

    pub(crate) fn stats(&self) -> Option<&Stats> {
        self.stats.as_deref()
    }

    /// Answer one request: `op_in` is its fixed argument (zero-padded to at least
    /// [`wire::fixed_len`]), `data` the rest; the reply's payload goes into `out`. A handler
    /// that panics is answered EIO: a transport's thread must outlive any request, since the
    /// kernel would wait on it.
    pub fn serve(&self, h: &InHeader, op_in: &[u8], data: &[u8], out: &mut [u8]) -> Reply {
        if let Some(r) = self.saved_reply(h, out) {
            return r;
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut o = Out::new(out);
            match wire::decode(h.opcode, op_in, data) {
                Ok(args) => {
                    self.take_up(h, &args).map_err(Some)?;
                    self.answer(h, args, &mut o).map(|()| o.len())
                }
                Err(e) => Err(Some(e)),
            }
        }));
        let reply = match r {
            Ok(Ok(len)) => Reply::Data(len),
            Ok(Err(Some(e))) => Reply::Error(e),
            Ok(Err(None)) => Reply::None,
            Err(_) => {
                error!(opcode = h.opcode, "request handler panicked; answered EIO");
                Reply::Error(libc::EIO)
            }
        };
        if self.journal.is_some() {
            let reply = self.settle_resent(h, reply);
            self.record_reply(h, reply, out);
            return reply;
        }
        reply
    }

    /// Whether a request may have left the kernel's caches stale: then the transport calls
    /// [`Session::settle_stale`] before its reply is sent.
    pub fn may_stale(&self, opcode: u32) -> bool {
        // OPEN and listings too: an access may have stamped an atime (see overlay::atime).
        self.ov.writable()
            && (wire::op::MUTATING.contains(&opcode)
                || matches!(
                    opcode,
                    wire::op::OPEN | wire::op::READDIR | wire::op::READDIRPLUS
                ))
    }

    /// What requests made stale since the last call, to be told the kernel. Stale inodes
    /// are told here, before the reply: a caller that stats the file as soon as its write
    /// returns must see the mode the write changed (set-ID bits cleared), and an inode's
    /// invalidation takes no lock a request may hold. Stale entries are returned, for the
    /// notifier thread to tell after the reply (see [`Session::start_notifier`]).
    pub fn settle_stale(&self) -> Option<Stale> {
        let mut stale = self.ov.take_stale();
        for ino in std::mem::take(&mut stale.inodes) {
            self.inval_inode(ino);
        }
        (!stale.entries.is_empty()).then_some(stale)
    }

    /// Tell the kernel what `stale` names. Not from a thread the kernel may be waiting on
    /// for the request that holds the lock an invalidation needs.
    pub fn notify(&self, stale: Stale) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        for ino in stale.inodes {
            self.inval_inode(ino);
        }
        for (parent, name) in stale.entries {
            let mut body = smallvec::SmallVec::<[u8; 256]>::from_elem(0, 17 + name.len());
            Out::new(&mut body).inval_entry(parent, &name);
            self.send_notify(wire::notify::INVAL_ENTRY, &body);
        }
    }

    fn inval_inode(&self, ino: u64) {
        let mut body = [0u8; 24];
        Out::new(&mut body).inval_inode(ino);
        self.send_notify(wire::notify::INVAL_INODE, &body);
    }

    fn send_notify(&self, code: i32, body: &[u8]) {
        let h = wire::out_header(0, code, body.len());
        let iov = [io::IoSlice::new(&h), io::IoSlice::new(body)];
        // ENOENT: the kernel did not have it cached; nothing to do.
        if let Err(e) = rustix::io::writev(&self.dev, &iov) {
            if e != rustix::io::Errno::NOENT {
                debug!(error = %e, code, "notification not sent");
            }
        }
    }

    /// A thread that tells the kernel what requests made stale, for both transports. The
    /// thread that answered must not do it itself: an invalidation of an entry waits for its
    /// directory's lock, which a request queued behind may hold (with one reader, or all
    /// readers invalidating at once, nobody would serve it).
    /// One per session, however many transports ask: it lives as long as the process.
    pub fn start_notifier(&self) -> crossbeam_channel::Sender<Stale> {
        self.notifier.get_or_init(|| self.spawn_notifier()).clone()
    }

    fn spawn_notifier(&self) -> crossbeam_channel::Sender<Stale> {
        let (tx, rx) = crossbeam_channel::unbounded::<Stale>();
        let s = self.clone();
        let spawned = std::thread::Builder::new()
            .name("fuse-notify".into())
            .spawn(move || {
                while let Ok(stale) = rx.recv() {
                    s.notify(stale);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no notifier thread: kernel caches may stay stale after copy-up");
        }
        tx
    }

    /// The connection ended: once, whether the kernel sent DESTROY or not.
    pub fn unmounted(&self) {
        self.unmounted.call_once(|| {
            debug!(live_nodes = self.ov.live_nodes(), "unmounting");
            self.ov.unmounted();
        });
    }

    /// The connection's `/dev/fuse`.
    pub fn dev(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dev.as_fd()
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
        let n = self.ov.read_file(ino, &fd, buf, offset)?;
        if let Some(st) = &self.stats {
            self.count_read(st, ino, offset, n);
        }
        if let Some(log) = &self.access {
            log.record(ino, n, || {
                let (path, layer) = self.ov.origin(ino)?;
                Some((String::from_utf8_lossy(&path).into_owned(), layer))
            });
        }
        Ok(n)
    }

    /// Bytes read by layer; a read from the start, when a prefetch runs, as its hit or miss.
    fn count_read(&self, st: &Stats, ino: u64, offset: u64, n: usize) {
        if let Some(l) = self.ov.layer_of(ino) {
            st.page().bytes_read(l, n as u64);
        }
        let Some(p) = self.prefetch.get().filter(|_| offset == 0) else {
            return;
        };
        let Some((path, _)) = self.ov.origin(ino) else {
            return;
        };
        let hit = p.state_of(&String::from_utf8_lossy(&path)) == Some(State::Fetched);
        let which = if hit {
            Scalar::PrefetchHits
        } else {
            Scalar::PrefetchMisses
        };
        st.page().add(which, 1);
    }

    /// Forget handle `fh` and its backing file's use.
    pub(crate) fn release_handle(&self, fh: u64) {
        if let Some(j) = self.journal() {
            j.release(fh);
        }
        self.reopenable.remove(&fh);
        if let Some((_, h)) = self.handles.remove(&fh) {
            if h.passthrough {
                self.backings.lock().release(h.ino);
            }
            // The last handle of a file removed while open: its parked copy goes.
            if self.ov.is_parked(h.ino)
                && !self.handles.iter().any(|o| o.ino == h.ino)
                && !self.reopenable.iter().any(|o| o.value().0 == h.ino)
            {
                self.ov.unpark(h.ino);
            }
        }
    }

    /// Whether the ACL lets `uid` make this request. Requests the kernel may send on its own
    /// account (reads and writes of open files, releases, forgets) always pass.
    fn allowed(&self, h: &InHeader) -> bool {
        let ok = match self.acl {
            Acl::All => true,
            Acl::RootAndOwner => h.uid == self.owner || h.uid == 0,
            Acl::Owner => h.uid == self.owner,
        };
        use wire::op;
        ok || matches!(
            h.opcode,
            op::INIT
                | op::INTERRUPT
                | op::DESTROY
                | op::READ
                | op::READDIR
                | op::READDIRPLUS
                | op::FORGET
                | op::BATCH_FORGET
                | op::WRITE
                | op::FSYNC
                | op::FSYNCDIR
                | op::RELEASE
                | op::RELEASEDIR
        )
    }
}
