//! INIT: what the mount asks of the kernel, and the record of what was agreed. The kernel
//! sends INIT once per connection and never again, so a server that picks up a live
//! connection needs the saved request and reply ([`SavedInit`]) to know what it speaks.

use std::sync::atomic::Ordering;

use tracing::info;

use super::{Passthrough, Session};
use crate::mount::wire::{self, InHeader, Out, init, u16_at, u32_at};

/// The largest write (and read) the mount negotiates: each `/dev/fuse` reader and each ring
/// entry holds a buffer of this size. A whole number of pages of any size Linux uses (4 to 64
/// KiB), and no more than the kernel allows by default (`fuse.max_pages_limit`, 256 pages).
pub const MAX_WRITE: u32 = 1 << 20;
const MAX_READAHEAD: u32 = 1 << 20;
const MAX_BACKGROUND: u16 = 16;

/// `struct fuse_init_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    /// `flags | flags2 << 32` (flags2 only with FUSE_INIT_EXT).
    pub flags: u64,
}

impl InitIn {
    pub fn parse(op_in: &[u8]) -> InitIn {
        let lo = u32_at(op_in, 12) as u64;
        let hi = if lo & init::INIT_EXT != 0 {
            u32_at(op_in, 16) as u64
        } else {
            0
        };
        InitIn {
            major: u32_at(op_in, 0),
            minor: u32_at(op_in, 4),
            max_readahead: u32_at(op_in, 8),
            flags: lo | hi << 32,
        }
    }
}

/// What the kernel and the server agreed at INIT (from the reply: `struct fuse_init_out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The protocol minor version both speak: the lower of the two.
    pub minor: u32,
    /// The flags the reply asked for, of those the kernel offered.
    pub flags: u64,
    pub max_write: u32,
    pub max_pages: u16,
    pub max_readahead: u32,
}

impl Negotiated {
    pub fn has(&self, flag: u64) -> bool {
        self.flags & flag != 0
    }
}

/// The INIT request and reply of a connection, as they crossed `/dev/fuse` (headers
/// included): all a new server needs to serve a connection that is already initialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedInit {
    pub request: Vec<u8>,
    pub reply: Vec<u8>,
}

impl SavedInit {
    /// What was agreed; `None` for bytes that are not an INIT request and its reply.
    pub fn negotiated(&self) -> Option<Negotiated> {
        let (rq, rp) = (&self.request, &self.reply);
        if rq.len() < wire::IN_HEADER_LEN + 16 || rp.len() < wire::OUT_HEADER_LEN + 24 {
            return None;
        }
        if InHeader::parse(rq).opcode != wire::op::INIT || u32_at(rp, 4) != 0 {
            return None;
        }
        let kernel = InitIn::parse(&padded(&rq[wire::IN_HEADER_LEN..]));
        let o = &padded(&rp[wire::OUT_HEADER_LEN..]);
        let lo = u32_at(o, 12) as u64;
        let flags = lo | (u32_at(o, 32) as u64) << 32;
        Some(Negotiated {
            minor: kernel.minor.min(u32_at(o, 4)),
            flags,
            max_write: u32_at(o, 20),
            max_pages: u16_at(o, 28),
            max_readahead: u32_at(o, 8),
        })
    }

    /// One buffer: the request's length, the request, the reply.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + self.request.len() + self.reply.len());
        v.extend_from_slice(&(self.request.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.request);
        v.extend_from_slice(&self.reply);
        v
    }

    pub fn from_bytes(b: &[u8]) -> Option<SavedInit> {
        let n = u32_at(b.get(..4)?, 0) as usize;
        let request = b.get(4..4 + n)?.to_vec();
        let reply = b.get(4 + n..)?.to_vec();
        let s = SavedInit { request, reply };
        s.negotiated().map(|_| s)
    }
}

/// `b` zero-padded to 64 bytes, the size of both INIT structures today.
fn padded(b: &[u8]) -> [u8; 64] {
    let mut p = [0u8; 64];
    let n = b.len().min(64);
    p[..n].copy_from_slice(&b[..n]);
    p
}

impl Session {
    /// The reply to the kernel's INIT `k`; `rings`: the io_uring queues are ready to be
    /// registered if the kernel agrees. Writes `struct fuse_init_out` into `out`.
    pub fn negotiate(&self, k: &InitIn, rings: bool, out: &mut Out<'_>) -> Negotiated {
        let mut want = init::ASYNC_READ
            | init::BIG_WRITES
            | init::MAX_PAGES
            | init::INIT_EXT
            | init::CACHE_SYMLINKS
            | init::PARALLEL_DIROPS
            | init::NO_OPENDIR_SUPPORT
            // Readdirplus (the kernel picks when): a listing also answers the lookups that
            // follow.
            | init::DO_READDIRPLUS
            | init::READDIRPLUS_AUTO;
        if self.ov.writable() {
            // Opens are answered: writes need a handle, and O_TRUNC comes with the open so
            // a file about to be emptied is copied up without its content.
            want |= init::ATOMIC_O_TRUNC;
            // We clear set-ID bits ourselves (see Overlay::kill_suidgid): without this the
            // kernel sends a GETXATTR security.capability before every write(2).
            want |= init::HANDLE_KILLPRIV_V2;
            // POSIX ACLs take effect: the kernel checks them and leaves the umask to us, so
            // that a directory's default ACL can decide a new entry's mode (Overlay::create).
            want |= init::POSIX_ACL | init::DONT_MASK;
            if self.writeback {
                want |= init::WRITEBACK_CACHE;
            }
        } else {
            want |= init::NO_OPEN_SUPPORT;
        }
        let rings = rings && self.ring_usable(k.flags);
        let root = rustix::process::geteuid().is_root();
        let passthrough = self.passthrough == Passthrough::On
            && !self.ov.writable()
            && !rings
            && root
            && k.flags & init::PASSTHROUGH != 0
            && k.minor >= 40;
        if passthrough {
            want |= init::PASSTHROUGH;
        }
        if rings {
            want |= init::OVER_IO_URING;
        }
        let flags = want & k.flags;
        let max_readahead = k.max_readahead.min(MAX_READAHEAD);
        // In the running kernel's pages: each ring entry's payload and each reader's buffer
        // must hold max_pages of them.
        let page = rustix::param::page_size() as u32;
        let max_pages = MAX_WRITE.max(max_readahead).div_ceil(page) as u16;
        out.u32(wire::KERNEL_VERSION);
        out.u32(wire::KERNEL_MINOR_VERSION);
        out.u32(max_readahead);
        out.u32(flags as u32);
        out.u16(MAX_BACKGROUND);
        out.u16(MAX_BACKGROUND * 3 / 4); // congestion_threshold
        out.u32(MAX_WRITE);
        out.u32(1); // time_gran: nanoseconds
        out.u16(max_pages);
        out.u16(0); // map_alignment
        out.u32((flags >> 32) as u32);
        out.u32(passthrough as u32); // max_stack_depth
        out.bytes(&[0u8; 24]);
        self.handle_opens.store(passthrough, Ordering::Relaxed);
        info!(passthrough, "mount is live");
        Negotiated {
            minor: k.minor.min(wire::KERNEL_MINOR_VERSION),
            flags,
            max_write: MAX_WRITE,
            max_pages,
            max_readahead,
        }
    }

    /// Take up a connection initialised before (by an earlier server).
    pub fn resume(&self, n: &Negotiated) {
        self.handle_opens
            .store(n.has(init::PASSTHROUGH), Ordering::Relaxed);
    }

    /// Whether this mount can be served through the rings; says why not otherwise.
    fn ring_usable(&self, offered: u64) -> bool {
        if offered & init::OVER_IO_URING != 0 {
            return true;
        }
        info!(
            "io_uring not used: the kernel does not offer it \
             (/sys/module/fuse/parameters/enable_uring is N); serving through /dev/fuse"
        );
        false
    }
}
