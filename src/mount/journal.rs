//! What the kernel knows about a mount, kept where a server's death cannot take it: a memfd
//! the keeper holds ([`crate::mount::keeper`]), mapped by every server in turn. A new server
//! reads it back ([`Journal::replay`]) and answers the kernel's node ids, file handles and
//! resent requests as the dead one would have.
//!
//! Safe when torn: one writer at a time appends a record and only then moves the committed
//! length, so a server killed mid-record leaves the journal as it was before that record.
//! Every record is written before the reply that tells the kernel about it. Reply slots are
//! cleared, written, then tagged with their request's `unique`.
//!
//! Layout: a header page (magic, committed length), [`SLOTS`] reply slots, then the log.
//! The memfd is sparse: pages cost memory only once written.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashSet;
use parking_lot::Mutex;

use super::session::init::SavedInit;

const MAGIC: &[u8; 8] = b"STRJNL01";
/// Address space reserved for the journal; only what is written takes memory.
const CAPACITY: usize = 1 << 30;
const HEADER: usize = 4096;
/// Slots for the replies of requests that change the writable layer, by `unique`: only
/// requests in flight when a server dies are resent, far fewer than this.
pub const SLOTS: usize = 1024;
const SLOT: usize = 512;
const LOG_START: usize = HEADER + SLOTS * SLOT;

/// The bit the kernel sets in `unique` of a request it sends again after FUSE_NOTIFY_RESEND.
pub const UNIQUE_RESEND: u64 = 1 << 63;

mod kind {
    pub const INIT: u8 = 1;
    pub const NODE: u8 = 2;
    pub const FORGET: u8 = 3;
    pub const OPEN: u8 = 4;
    pub const RELEASE: u8 = 5;
}

pub struct Journal {
    fd: OwnedFd,
    map: memmap2::MmapRaw,
    append: Mutex<()>,
    /// Node ids with a record in the log (so a lookup repeated for the same node writes
    /// nothing).
    known: DashSet<u64>,
}

/// What a journal says, for a new server.
#[derive(Debug, Default)]
pub struct Replay {
    pub init: Option<SavedInit>,
    /// Node id -> (parent node id, name) the kernel knows it by.
    pub nodes: HashMap<u64, (u64, Box<[u8]>)>,
    /// Open handle -> (node id, open flags).
    pub handles: HashMap<u64, (u64, u32)>,
    /// The highest handle ever given out (new ones start above it).
    pub max_fh: u64,
}

impl Journal {
    /// A new, empty journal in a memfd (close-on-exec: the keeper passes it on on purpose).
    pub fn create() -> io::Result<Journal> {
        let fd = rustix::fs::memfd_create("stratafs-journal", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, CAPACITY as u64)?;
        let j = Journal::map(fd)?;
        j.write_at(0, MAGIC);
        j.committed().store(LOG_START as u64, Ordering::Release);
        Ok(j)
    }

    /// The journal in `fd`, as a keeper passed it.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Journal> {
        let j = Journal::map(fd)?;
        if j.bytes(0, 8) != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a stratafs journal",
            ));
        }
        Ok(j)
    }

    fn map(fd: OwnedFd) -> io::Result<Journal> {
        let map = memmap2::MmapOptions::new().len(CAPACITY).map_raw(&fd)?;
        Ok(Journal {
            fd,
            map,
            append: Mutex::new(()),
            known: DashSet::new(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn committed(&self) -> &AtomicU64 {
        // SAFETY: the header is mapped, 8-aligned, and only ever accessed atomically.
        unsafe { &*(self.map.as_mut_ptr().add(8) as *const AtomicU64) }
    }

    fn write_at(&self, off: usize, b: &[u8]) {
        assert!(off + b.len() <= CAPACITY);
        // SAFETY: in bounds (checked); writers of one region are serialised by the caller.
        unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr(), self.map.as_mut_ptr().add(off), b.len())
        }
    }

    fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= CAPACITY);
        // SAFETY: in bounds; read only where a writer has committed, or by the one reader.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off), len) }
    }

    /// Bytes of log written (what a journal of this many nodes costs).
    pub fn log_len(&self) -> u64 {
        self.committed().load(Ordering::Acquire) - LOG_START as u64
    }

    fn append(&self, kind: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let _g = self.append.lock();
        let at = self.committed().load(Ordering::Acquire) as usize;
        if at + 5 + len > CAPACITY {
            tracing::error!(
                "the journal is full: a server restarted now may answer some nodes ESTALE"
            );
            return;
        }
        self.write_at(at, &[kind]);
        self.write_at(at + 1, &(len as u32).to_le_bytes());
        let mut o = at + 5;
        for p in parts {
            self.write_at(o, p);
            o += p.len();
        }
        self.committed().store(o as u64, Ordering::Release);
    }

    pub fn init(&self, init: &SavedInit) {
        self.append(kind::INIT, &[&init.to_bytes()]);
    }

    /// The kernel is told of node `ino` as `name` in `parent` (a lookup, a new entry, a
    /// READDIRPLUS entry). Written once per node until it is forgotten.
    pub fn node(&self, ino: u64, parent: u64, name: &[u8]) {
        // Every lookup comes here: a shared lock answers the usual case (known already).
        if !self.known.contains(&ino) && self.known.insert(ino) {
            self.append(
                kind::NODE,
                &[&ino.to_le_bytes(), &parent.to_le_bytes(), name],
            );
        }
    }

    /// Node `ino` now goes by `name` in `parent` (a rename).
    pub fn moved(&self, ino: u64, parent: u64, name: &[u8]) {
        self.known.insert(ino);
        self.append(
            kind::NODE,
            &[&ino.to_le_bytes(), &parent.to_le_bytes(), name],
        );
    }

    /// The kernel forgot `ino`.
    pub fn forget(&self, ino: u64) {
        if self.known.remove(&ino).is_some() {
            self.append(kind::FORGET, &[&ino.to_le_bytes()]);
        }
    }

    pub fn open(&self, fh: u64, ino: u64, flags: u32) {
        self.append(
            kind::OPEN,
            &[&fh.to_le_bytes(), &ino.to_le_bytes(), &flags.to_le_bytes()],
        );
    }

    pub fn release(&self, fh: u64) {
        self.append(kind::RELEASE, &[&fh.to_le_bytes()]);
    }

    fn slot(unique: u64) -> usize {
        HEADER + ((unique & !UNIQUE_RESEND) >> 1) as usize % SLOTS * SLOT
    }

    fn slot_tag(&self, at: usize) -> &AtomicU64 {
        // SAFETY: slots are 512-aligned inside the mapping; the tag is only used atomically.
        unsafe { &*(self.map.as_mut_ptr().add(at) as *const AtomicU64) }
    }

    /// The reply to request `unique` (an errno, or `payload`), before it is sent.
    pub fn reply(&self, unique: u64, error: i32, payload: &[u8]) {
        if payload.len() > SLOT - 16 {
            return;
        }
        let at = Journal::slot(unique);
        let tag = self.slot_tag(at);
        tag.store(0, Ordering::Release);
        self.write_at(at + 8, &error.to_le_bytes());
        self.write_at(at + 12, &(payload.len() as u32).to_le_bytes());
        self.write_at(at + 16, payload);
        tag.store(unique & !UNIQUE_RESEND, Ordering::Release);
    }

    /// The reply recorded for `unique` (resent or not): (errno, payload).
    pub fn saved_reply(&self, unique: u64) -> Option<(i32, Vec<u8>)> {
        let at = Journal::slot(unique);
        if self.slot_tag(at).load(Ordering::Acquire) != unique & !UNIQUE_RESEND {
            return None;
        }
        let b = self.bytes(at + 8, 8);
        let error = i32::from_le_bytes(b[..4].try_into().unwrap());
        let len = (u32::from_le_bytes(b[4..].try_into().unwrap()) as usize).min(SLOT - 16);
        Some((error, self.bytes(at + 16, len).to_vec()))
    }

    /// The saved INIT, if a server recorded it (the first record): without reading the rest.
    pub fn saved_init(&self) -> Option<SavedInit> {
        let end = self.committed().load(Ordering::Acquire) as usize;
        if LOG_START + 5 > end || self.bytes(LOG_START, 1)[0] != kind::INIT {
            return None;
        }
        let len = u32::from_le_bytes(self.bytes(LOG_START + 1, 4).try_into().unwrap()) as usize;
        if LOG_START + 5 + len > end {
            return None;
        }
        SavedInit::from_bytes(self.bytes(LOG_START + 5, len))
    }

    /// Read the log back: what the kernel knows. Also marks every live node known, so this
    /// server does not write them again.
    pub fn replay(&self) -> Replay {
        let end = self.committed().load(Ordering::Acquire) as usize;
        let mut r = Replay::default();
        let mut at = LOG_START;
        let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        while at + 5 <= end {
            let k = self.bytes(at, 1)[0];
            let len = u32::from_le_bytes(self.bytes(at + 1, 4).try_into().unwrap()) as usize;
            if at + 5 + len > end {
                break;
            }
            let p = self.bytes(at + 5, len);
            match k {
                kind::INIT => r.init = SavedInit::from_bytes(p),
                kind::NODE if len >= 16 => {
                    r.nodes.insert(u64_at(p, 0), (u64_at(p, 8), p[16..].into()));
                }
                kind::FORGET if len >= 8 => {
                    r.nodes.remove(&u64_at(p, 0));
                }
                kind::OPEN if len >= 20 => {
                    let flags = u32::from_le_bytes(p[16..20].try_into().unwrap());
                    r.max_fh = r.max_fh.max(u64_at(p, 0));
                    r.handles.insert(u64_at(p, 0), (u64_at(p, 8), flags));
                }
                kind::RELEASE if len >= 8 => {
                    r.handles.remove(&u64_at(p, 0));
                }
                _ => tracing::warn!(kind = k, "unknown journal record skipped"),
            }
            at += 5 + len;
        }
        for ino in r.nodes.keys() {
            self.known.insert(*ino);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_reads_back_what_was_written_and_ignores_a_torn_record() {
        let j = Journal::create().unwrap();
        j.node(10, 1, b"a");
        j.node(10, 1, b"a");
        j.node(11, 10, b"b");
        j.moved(11, 1, b"c");
        j.node(12, 1, b"d");
        j.forget(12);
        j.open(7, 11, 2);
        j.open(8, 10, 0);
        j.release(8);
        j.reply(40, 0, b"entry");
        j.reply(42 | UNIQUE_RESEND, -2, b"");
        // A record half written by a server that died: its length never committed.
        let end = j.committed().load(Ordering::Acquire) as usize;
        j.write_at(end, &[kind::NODE, 200, 0, 0, 0, 1, 2, 3]);

        let dup = rustix::io::fcntl_dupfd_cloexec(j.fd(), 0).unwrap();
        let again = Journal::from_fd(dup).unwrap();
        let r = again.replay();
        assert_eq!(r.nodes.len(), 2);
        assert_eq!(r.nodes[&10], (1, b"a".to_vec().into()));
        assert_eq!(r.nodes[&11], (1, b"c".to_vec().into()));
        assert_eq!(r.handles, HashMap::from([(7, (11, 2))]));
        assert_eq!(again.saved_reply(40), Some((0, b"entry".to_vec())));
        assert_eq!(
            again.saved_reply(40 | UNIQUE_RESEND),
            Some((0, b"entry".to_vec()))
        );
        assert_eq!(again.saved_reply(42), Some((-2, Vec::new())));
        assert_eq!(again.saved_reply(44), None);
        // Known nodes are not written twice by the new server.
        let before = again.log_len();
        again.node(10, 1, b"a");
        assert_eq!(again.log_len(), before);
    }
}
