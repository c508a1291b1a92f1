//! The merged listing of one directory: built once from its layers, then immutable, so that an
//! entry's offset (its position) never changes and seekdir/telldir neither repeat nor skip.

use std::collections::HashSet;
use std::io;

use crate::inode::Ino;
use crate::layer::{Layer, RelPath};
use crate::whiteout::{self, Marker};

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Box<[u8]>,
    /// `S_IFMT` bits.
    pub kind: u32,
    /// The inode number the entry will have once looked up.
    pub ino: Ino,
    /// Index of the topmost layer holding the entry.
    pub top: u16,
}

#[derive(Debug, Default)]
pub struct Listing {
    entries: Vec<DirEntry>,
    /// Indices into `entries`, sorted by name, for lookups.
    by_name: Vec<u32>,
}

impl Listing {
    /// Merge `rel` over `layers` (top first, already cut at the first opaque one).
    /// `ino_of(layer, real_ino)` maps a layer's inode number into the mount's.
    pub fn build(
        layers: &[&Layer],
        rel: &RelPath,
        ino_of: impl Fn(&Layer, u64) -> Ino,
    ) -> io::Result<Listing> {
        let mut entries: Vec<DirEntry> = Vec::new();
        // Names decided by an upper layer: shown, or hidden by a whiteout.
        let mut decided: HashSet<Vec<u8>> = HashSet::new();
        for layer in layers {
            let raw = match layer.read_dir(rel) {
                Ok(r) => r,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            let mut hidden_below: Vec<Vec<u8>> = Vec::new();
            for e in raw {
                match whiteout::classify(&e.name) {
                    Marker::Whiteout(target) => hidden_below.push(target.to_vec()),
                    Marker::Opaque | Marker::Internal => {}
                    Marker::Entry if e.char_whiteout => hidden_below.push(e.name),
                    Marker::Entry => {
                        if decided.contains(&e.name) {
                            continue;
                        }
                        entries.push(DirEntry {
                            name: e.name.clone().into_boxed_slice(),
                            kind: e.kind,
                            ino: ino_of(layer, e.ino),
                            top: layer.index as u16,
                        });
                        decided.insert(e.name);
                    }
                }
            }
            // A whiteout hides names of the layers below only, never its own layer's.
            decided.extend(hidden_below);
        }
        let mut by_name: Vec<u32> = (0..entries.len() as u32).collect();
        by_name.sort_unstable_by(|&a, &b| entries[a as usize].name.cmp(&entries[b as usize].name));
        Ok(Listing { entries, by_name })
    }

    pub fn entries(&self) -> &[DirEntry] {
        &self.entries
    }

    pub fn find(&self, name: &[u8]) -> Option<&DirEntry> {
        self.by_name
            .binary_search_by(|&i| (*self.entries[i as usize].name).cmp(name))
            .ok()
            .map(|i| &self.entries[self.by_name[i] as usize])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
