//! The mount's namespace state: which inode numbers the kernel holds (the inode table), the
//! numbers that no longer follow from disk (kept across copy-up, or reassigned while an
//! unlinked file still holds the derived one), what the kernel must forget, and the lock that
//! keeps lookups from seeing half of a change.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use std::sync::Arc;

use super::inode::{Ino, InodeTable, Node};

/// Kernel cache entries to invalidate, collected by the core for the front end.
#[derive(Debug, Default)]
pub struct Stale {
    pub inodes: Vec<Ino>,
    pub entries: Vec<(Ino, Box<[u8]>)>,
}

#[derive(Debug)]
pub struct Namespace {
    table: InodeTable,
    /// Taken shared by lookups and listings, exclusively by anything that changes the upper
    /// layer's namespace, so a lookup never sees half of a rename or copy-up. It counts those
    /// changes (see [`Namespace::change`]): a listing built ahead without the lock is kept
    /// only if the count did not move meanwhile.
    lock: RwLock<u64>,
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
            lock: RwLock::new(0),
            remap: DashMap::new(),
            remapped: AtomicBool::new(false),
            alt_seq: AtomicU64::new(0),
            stale: Mutex::new(Stale::default()),
        }
    }

    /// The live node `ino`, if the kernel holds it.
    pub fn node(&self, ino: Ino) -> Option<Arc<Node>> {
        self.table.get(ino)
    }

    /// How many nodes are live.
    pub fn live(&self) -> usize {
        self.table.len()
    }

    /// The live node `ino`, made by `make` if there is none, with one more kernel reference;
    /// `None` when the live one is another file (`accept` refuses it). See
    /// [`InodeTable::lookup_ref`].
    pub fn find_or_make(
        &self,
        ino: Ino,
        make: impl FnOnce() -> Node,
        accept: impl FnOnce(&Node) -> bool,
    ) -> Option<Arc<Node>> {
        self.table.lookup_ref(ino, make, accept)
    }

    /// A node taken over from an earlier server: as many references as the kernel may hold
    /// (over-counting keeps a node longer; under-counting would drop one the kernel uses).
    pub fn hold(&self, node: &Node) {
        self.table.add_refs(node, 1 << 40);
    }

    /// Drop `n` kernel references to `ino`; whether the node went.
    pub fn forget(&self, ino: Ino, n: u64) -> bool {
        self.table.forget(ino, n)
    }

    /// The lock shared, for a lookup or a listing.
    pub fn reading(&self) -> RwLockReadGuard<'_, u64> {
        self.lock.read_recursive()
    }

    /// The lock taken to change the upper layer's namespace; the change is counted.
    pub fn change(&self) -> RwLockWriteGuard<'_, u64> {
        let mut ns = self.lock.write();
        *ns += 1;
        ns
    }

    /// The lock shared if nobody is changing the namespace now; never waits.
    pub fn try_reading(&self) -> Option<RwLockReadGuard<'_, u64>> {
        self.lock.try_read_recursive()
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
