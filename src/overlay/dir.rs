//! The merged listing of one directory: built once from its layers, then changed in place by
//! the writable layer. Offsets are positions; an entry keeps its position for the life of the
//! listing, and a removed one leaves a tombstone there, so seekdir/telldir neither repeat nor
//! skip while `rm -rf` or a create runs beside an open directory stream. A name that comes
//! back takes its own tombstone's place again instead of a new position at the end: each name
//! has at most one position, so a listing always ends, even while its entries are renamed
//! away and back (a stream that passed the place does not see the name again).

use std::hash::{BuildHasher, RandomState};
use std::io;

use hashbrown::HashTable;

use super::inode::Ino;
use crate::stack::resolve;
use crate::stack::{Layer, RelPath};

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Box<[u8]>,
    /// `S_IFMT` bits.
    pub kind: u32,
    /// The inode number the entry will have once looked up.
    pub ino: Ino,
    /// Index of the topmost layer holding the entry.
    pub top: u16,
    /// A lower layer below `top` may hold the name too (always assumed for names added since
    /// the listing was built): a lookup must look there.
    pub below: bool,
    /// Removed since the listing was built; kept so later offsets stay put.
    pub removed: bool,
}

#[derive(Debug, Default)]
pub struct Listing {
    entries: Vec<DirEntry>,
    /// Live entries by name (indices into `entries`); the table stores no second copy of names.
    by_name: HashTable<u32>,
    /// Tombstones by name, for a name that comes back.
    dead: HashTable<u32>,
    hasher: RandomState,
    live: usize,
}

impl Listing {
    /// Merge `rel` over `layers` (stack indices, top first, already cut at the first opaque
    /// one). `ino_of(layer, real_ino)` maps a layer's inode number into the mount's.
    pub fn build(
        stack: &[Layer],
        layers: &[u16],
        rel: &RelPath,
        ino_of: impl Fn(&Layer, u64) -> Ino,
    ) -> io::Result<Listing> {
        let merged = resolve::merge_dir(stack, layers, rel)?;
        let mut l = Listing::default();
        l.entries.reserve_exact(merged.len());
        l.by_name.reserve(merged.len(), |_| 0); // empty: nothing to rehash
        for m in merged {
            let ino = ino_of(&stack[m.top as usize], m.entry.ino);
            l.push_unique(
                m.entry.name.into_boxed_slice(),
                m.entry.kind,
                ino,
                m.top,
                m.below,
            );
        }
        Ok(l)
    }

    /// Append a name the listing does not hold (merge_dir gives each name once).
    fn push_unique(&mut self, name: Box<[u8]>, kind: u32, ino: Ino, top: u16, below: bool) {
        let h = self.hash(&name);
        let i = self.entries.len() as u32;
        self.entries.push(DirEntry {
            name,
            kind,
            ino,
            top,
            below,
            removed: false,
        });
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.by_name
            .insert_unique(h, i, |&j| hasher.hash_one(&*entries[j as usize].name));
        self.live += 1;
    }

    fn hash(&self, name: &[u8]) -> u64 {
        self.hasher.hash_one(name)
    }

    fn index_of(&self, name: &[u8]) -> Option<u32> {
        let entries = &self.entries;
        self.by_name
            .find(self.hash(name), |&i| *entries[i as usize].name == *name)
            .copied()
    }

    /// Every entry ever listed, tombstones included; a position is an offset.
    pub fn entries(&self) -> &[DirEntry] {
        &self.entries
    }

    pub fn find(&self, name: &[u8]) -> Option<&DirEntry> {
        self.index_of(name).map(|i| &self.entries[i as usize])
    }

    /// A new name: back in its own tombstone's place if it had one, else appended, so that
    /// open streams past other entries still see it.
    pub fn add(&mut self, name: &[u8], kind: u32, ino: Ino, top: u16) {
        self.remove(name);
        let h = self.hash(name);
        let entries = &self.entries;
        let i = match self
            .dead
            .find_entry(h, |&i| *entries[i as usize].name == *name)
        {
            Ok(occ) => {
                let (i, _) = occ.remove();
                self.entries[i as usize] = DirEntry {
                    name: name.into(),
                    kind,
                    ino,
                    top,
                    below: true,
                    removed: false,
                };
                i
            }
            Err(_) => {
                let i = self.entries.len() as u32;
                self.entries.push(DirEntry {
                    name: name.into(),
                    kind,
                    ino,
                    top,
                    below: true,
                    removed: false,
                });
                i
            }
        };
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.by_name
            .insert_unique(h, i, |&j| hasher.hash_one(&*entries[j as usize].name));
        self.live += 1;
    }

    /// Tombstone a name. Returns whether it was listed.
    pub fn remove(&mut self, name: &[u8]) -> bool {
        let h = self.hash(name);
        let entries = &self.entries;
        match self
            .by_name
            .find_entry(h, |&i| *entries[i as usize].name == *name)
        {
            Ok(occ) => {
                let (i, _) = occ.remove();
                self.entries[i as usize].removed = true;
                self.live -= 1;
                let (entries, hasher) = (&self.entries, &self.hasher);
                self.dead
                    .insert_unique(h, i, |&j| hasher.hash_one(&*entries[j as usize].name));
                true
            }
            Err(_) => false,
        }
    }

    /// The entry now lives in layer `top` (copied up) under inode number `ino`.
    pub fn update(&mut self, name: &[u8], top: u16, ino: Ino) {
        if let Some(i) = self.index_of(name) {
            let e = &mut self.entries[i as usize];
            if e.top != top {
                // The layer that held it before (a copy-up leaves the lower entry under the
                // new upper one) may still hold it below.
                e.below = true;
            }
            e.top = top;
            e.ino = ino;
        }
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_survive_changes() {
        let mut l = Listing::default();
        for n in ["a", "b", "c"] {
            l.add(n.as_bytes(), libc::S_IFREG, 10, 0);
        }
        assert!(l.remove(b"b"));
        assert!(!l.remove(b"b"));
        l.add(b"b", libc::S_IFDIR, 11, 0);
        let names: Vec<_> = l
            .entries()
            .iter()
            .map(|e| (String::from_utf8_lossy(&e.name).into_owned(), e.removed))
            .collect();
        assert_eq!(
            names,
            [("a", false), ("b", false), ("c", false)].map(|(n, r)| (n.to_string(), r)),
            "a name that comes back takes its old place"
        );
        assert_eq!(l.len(), 3);
        assert_eq!(l.find(b"b").unwrap().kind, libc::S_IFDIR);
        assert!(l.find(b"x").is_none());
    }

    #[test]
    fn a_copy_up_leaves_the_lower_entry_below() {
        let mut l = Listing::default();
        // Built: only layer 2 holds "d".
        l.push_unique(b"d".as_slice().into(), libc::S_IFDIR, 5, 2, false);
        assert!(!l.find(b"d").unwrap().below);
        l.update(b"d", 0, 5);
        let e = l.find(b"d").unwrap();
        assert_eq!(e.top, 0);
        assert!(e.below, "layer 2 still holds d under the new copy");
    }

    #[test]
    fn renames_away_and_back_do_not_grow_the_listing() {
        let mut l = Listing::default();
        for i in 0..200 {
            l.add(format!("f{i}").as_bytes(), libc::S_IFREG, i, 0);
        }
        for i in 0..200 {
            let n = format!("f{i}");
            l.remove(n.as_bytes());
            l.add(b"T", libc::S_IFREG, i, 0);
            l.remove(b"T");
            l.add(n.as_bytes(), libc::S_IFREG, i, 0);
        }
        assert_eq!(l.entries().len(), 201);
        assert_eq!(l.len(), 200);
    }
}
