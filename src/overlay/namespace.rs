//! The mount's namespace state: which inode numbers the kernel holds (the inode table), the
//! numbers that no longer follow from disk (kept across copy-up, or reassigned while an
//! unlinked file still holds the derived one), and what the kernel must forget.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::inode::{Ino, InodeTable, Node};

/// Kernel cache entries to invalidate, collected by the core for the front end.
#[derive(Debug, Default)]
pub struct Stale {
    pub inodes: Vec<Ino>,
    pub entries: Vec<(Ino, Box<[u8]>)>,
}

#[derive(Debug)]
pub struct Namespace {
    pub(super) table: InodeTable,
    /// Composed real number -> node number, where they differ.
    remap: DashMap<Ino, Ino>,
    /// Whether `remap` was ever written: until then a listing looks nothing up in it.
    remapped: AtomicBool,
    alt_seq: AtomicU64,
    stale: Mutex<Stale>,
}

impl Namespace {
    pub fn new(root: Node) -> Namespace {
        Namespace {
            table: InodeTable::new(root),
            remap: DashMap::new(),
            remapped: AtomicBool::new(false),
            alt_seq: AtomicU64::new(0),
            stale: Mutex::new(Stale::default()),
        }
    }

    /// The node number an entry whose real (composed) number is `real` has.
    pub fn number_of(&self, real: Ino) -> Ino {
        if !self.remapped.load(Ordering::Acquire) {
            return real;
        }
        self.remap.get(&real).map_or(real, |v| *v)
    }

    /// From now on `real` is known as `ino` (a copy-up keeps the kernel's number).
    pub fn keep_number(&self, real: Ino, ino: Ino) {
        self.remapped.store(true, Ordering::Release);
        self.remap.insert(real, ino);
    }

    /// Give `real` a fresh number outside the range composed from disk, remembered while the
    /// mount lives: its derived one still belongs to another file the kernel holds.
    pub fn renumber(&self, real: Ino) -> Ino {
        let n = self.alt_seq.fetch_add(1, Ordering::Relaxed);
        let ino =
            (1 << 62) | ((real.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n) & ((1 << 62) - 1)) | 1;
        self.remapped.store(true, Ordering::Release);
        self.remap.insert(real, ino);
        ino
    }

    /// The file behind `real` is gone: its number is free again unless reassigned since.
    pub fn release_number(&self, real: Ino, ino: Ino) {
        self.remap.remove_if(&real, |_, v| *v == ino);
    }

    /// The kernel's attributes of `ino` are out of date.
    pub fn stale_inode(&self, ino: Ino) {
        self.stale.lock().inodes.push(ino);
    }

    /// The kernel's entries `(parent, name)` are out of date.
    pub fn stale_entries(&self, e: impl IntoIterator<Item = (Ino, Box<[u8]>)>) {
        self.stale.lock().entries.extend(e);
    }

    pub fn take_stale(&self) -> Stale {
        std::mem::take(&mut *self.stale.lock())
    }
}
