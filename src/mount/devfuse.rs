//! The `/dev/fuse` transport: threads that read requests from the connection's descriptor,
//! hand them to the [`Session`] and write its replies back, one `read(2)` and one `write(2)`
//! per request. Every thread reads the same descriptor, the one the caller owns: no
//! `FUSE_DEV_IOC_CLONE` clone, whose release would end its requests, so whoever holds a copy
//! of the descriptor holds the whole connection. A connection is taken up either fresh (the
//! INIT handshake, [`handshake`]) or already initialised, from its [`SavedInit`]
//! ([`Session::resume`] then [`serve`]).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use parking_lot::Mutex;

use crossbeam_channel::Sender;
use rustix::io::Errno;
use tracing::{debug, error, warn};

use super::session::init::{InitIn, MAX_WRITE, SavedInit};
use super::session::{Reply, Session};
use super::wire::{self, IN_HEADER_LEN, InHeader, OUT_HEADER_LEN, Out};
use crate::overlay::namespace::Stale;

/// A reader's buffer: the kernel refuses reads into less than a header, a write's argument
/// and `max_write` bytes.
pub const BUF_LEN: usize = MAX_WRITE as usize + 8192;

/// Answer the request `msg` (as read from `/dev/fuse`): the reply message written into
/// `reply` and its length, `None` when the request takes no reply.
pub fn answer(s: &Session, msg: &[u8], reply: &mut [u8]) -> Option<usize> {
    if msg.len() < IN_HEADER_LEN {
        return None;
    }
    let h = InHeader::parse(msg);
    let body = &msg[IN_HEADER_LEN..(h.len as usize).clamp(IN_HEADER_LEN, msg.len())];
    let fixed = wire::fixed_len(h.opcode).min(body.len());
    let mut op_in = [0u8; 128];
    op_in[..fixed].copy_from_slice(&body[..fixed]);
    let (error, len) = match s.serve(&h, &op_in, &body[fixed..], &mut reply[OUT_HEADER_LEN..]) {
        Reply::Data(n) => (0, n),
        Reply::Error(e) => (-e, 0),
        Reply::None => return None,
    };
    reply[..OUT_HEADER_LEN].copy_from_slice(&wire::out_header(h.unique, error, len));
    Some(OUT_HEADER_LEN + len)
}

/// Read one request; `Ok(None)` once the connection is gone (unmounted or aborted).
fn read(dev: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match rustix::io::read(dev, &mut *buf) {
            Ok(n) if n >= IN_HEADER_LEN => return Ok(Some(n)),
            Ok(n) => warn!(bytes = n, "short request from /dev/fuse ignored"),
            // ENOENT: the request was interrupted before we read it.
            Err(Errno::NOENT | Errno::INTR | Errno::AGAIN) => {}
            Err(Errno::NODEV) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

fn write(dev: &OwnedFd, msg: &[u8]) {
    match rustix::io::write(dev, msg) {
        Ok(_) => {}
        // ENOENT: the request was interrupted and is gone; ENODEV: so is the connection.
        Err(Errno::NOENT | Errno::NODEV) => {}
        Err(e) => warn!(error = %e, "reply not sent"),
    }
}

/// Wait for the kernel's INIT on the new connection `dev` and answer it; `rings`: the
/// io_uring queues are ready if the kernel agrees (the saved reply says whether it did).
pub fn handshake(dev: &OwnedFd, s: &Session, rings: bool) -> io::Result<SavedInit> {
    let mut buf = vec![0u8; BUF_LEN];
    loop {
        let n = read(dev, &mut buf)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotConnected, "connection ended before INIT")
        })?;
        let h = InHeader::parse(&buf);
        if h.opcode != wire::op::INIT {
            write(dev, &wire::out_header(h.unique, -libc::EIO, 0));
            return Err(io::Error::other(format!(
                "request {} before INIT",
                h.opcode
            )));
        }
        let mut op_in = [0u8; 64];
        let body = &buf[IN_HEADER_LEN..n];
        op_in[..body.len().min(64)].copy_from_slice(&body[..body.len().min(64)]);
        let k = InitIn::parse(&op_in);
        let mut reply = [0u8; OUT_HEADER_LEN + 64];
        if k.major > wire::KERNEL_VERSION {
            // The kernel asks again with our major version.
            let mut o = Out::new(&mut reply[OUT_HEADER_LEN..]);
            o.u32(wire::KERNEL_VERSION);
            o.u32(wire::KERNEL_MINOR_VERSION);
            reply[..OUT_HEADER_LEN].copy_from_slice(&wire::out_header(h.unique, 0, 64));
            write(dev, &reply);
            continue;
        }
        if k.major < wire::KERNEL_VERSION || k.minor < 31 {
            write(dev, &wire::out_header(h.unique, -libc::EPROTO, 0));
            return Err(io::Error::other(format!(
                "kernel FUSE protocol {}.{} is older than 7.31",
                k.major, k.minor
            )));
        }
        let mut o = Out::new(&mut reply[OUT_HEADER_LEN..]);
        let negotiated = s.negotiate(&k, rings, &mut o);
        let len = o.len();
        reply[..OUT_HEADER_LEN].copy_from_slice(&wire::out_header(h.unique, 0, len));
        rustix::io::write(dev, &reply[..OUT_HEADER_LEN + len])?;
        debug!(?negotiated, "INIT answered");
        return Ok(SavedInit {
            request: buf[..n].to_vec(),
            reply: reply[..OUT_HEADER_LEN + len].to_vec(),
        });
    }
}

/// Serve the connection with up to `threads` readers until it ends. A connection that INIT
/// put on io_uring needs one: only FORGETs and INTERRUPTs still come this way.
///
/// Readers are started as the load asks, not all at once: a reader that takes a request
/// and leaves nobody waiting on the descriptor starts another, up to `threads`. A mount
/// whose workload is one process at a time (most containers) keeps two readers and their
/// buffers, not one per CPU.
pub fn serve(dev: Arc<OwnedFd>, s: Session, threads: usize) -> io::Result<()> {
    let pool = Arc::new(Pool {
        dev,
        notify: s.start_notifier(),
        s,
        max: threads.max(1),
        started: AtomicUsize::new(1),
        idle: AtomicUsize::new(0),
        readers: Mutex::new(Vec::new()),
    });
    let mut r = worker(&pool);
    loop {
        let Some(w) = pool.readers.lock().pop() else {
            break;
        };
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => r = r.and(Err(e)),
            Err(_) => error!("a /dev/fuse reader panicked"),
        }
    }
    pool.s.unmounted();
    r
}

/// The readers of one connection.
struct Pool {
    dev: Arc<OwnedFd>,
    s: Session,
    notify: Sender<Stale>,
    max: usize,
    /// Readers started (the first is the caller's thread).
    started: AtomicUsize,
    /// Readers waiting in read(2) now.
    idle: AtomicUsize,
    readers: Mutex<Vec<thread::JoinHandle<io::Result<()>>>>,
}

impl Pool {
    /// Start one more reader, unless there are enough.
    fn grow(self: &Arc<Pool>) {
        let n = self.started.load(Ordering::Relaxed);
        if n >= self.max
            || self
                .started
                .compare_exchange(n, n + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let pool = Arc::clone(self);
        match thread::Builder::new()
            .name(format!("fuse-dev-{n}"))
            .spawn(move || worker(&pool))
        {
            Ok(h) => self.readers.lock().push(h),
            Err(e) => {
                self.started.fetch_sub(1, Ordering::Relaxed);
                warn!(error = %e, "one /dev/fuse reader fewer");
            }
        }
    }
}

fn worker(pool: &Arc<Pool>) -> io::Result<()> {
    let (dev, s) = (&*pool.dev, &pool.s);
    let mut buf = vec![0u8; BUF_LEN];
    let mut reply = vec![0u8; BUF_LEN];
    loop {
        pool.idle.fetch_add(1, Ordering::Relaxed);
        let got = read(dev, &mut buf);
        let left = pool.idle.fetch_sub(1, Ordering::Relaxed) - 1;
        let Some(n) = got? else {
            break;
        };
        if left == 0 {
            // Nobody is left waiting for the next request.
            pool.grow();
        }
        let opcode = InHeader::parse(&buf).opcode;
        let replied = answer(s, &buf[..n], &mut reply);
        let stale = s.may_stale(opcode).then(|| s.settle_stale()).flatten();
        if let Some(len) = replied {
            write(dev, &reply[..len]);
        }
        if let Some(stale) = stale {
            // After the reply, by the notifier thread (see Session::start_notifier).
            let _ = pool.notify.send(stale);
        }
    }
    Ok(())
}
