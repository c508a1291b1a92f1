//! Reading a merged directory from an offset into a front end's sink. The offset scheme is
//! the core's: 1 = ".", 2 = "..", 3 + i = listing position i, fixed for the life of the
//! listing (see [`super::dir`]).
//!
//! A READDIRPLUS entry normally carries attributes, which costs a stat of every entry: work a
//! plain `find` never needs (the kernel's overlayfs does none of it). A front end that can send
//! entries without attributes (node id 0: the kernel links nothing and looks the name up when
//! it needs to) may ask for [`Bare::Lazy`]: non-directories not yet known then go without, until
//! a LOOKUP in the directory shows that whoever lists it also looks at what it lists (`ls -l`,
//! `tar`, `du`, `rm -rf`); from then on that directory, its parent and every directory listed
//! below them carry attributes. Directories always carry them, since a walk descends into them.

use std::io;
use std::sync::atomic::Ordering;

use super::Overlay;
use super::inode::{Attr, Ino, Node, ROOT_INO};

/// One entry of a plain listing.
#[derive(Debug, Clone, Copy)]
pub struct DirItem<'a> {
    pub ino: Ino,
    /// The offset of the entry after this one.
    pub next: u64,
    /// `S_IFMT` bits.
    pub kind: u32,
    pub name: &'a [u8],
}

/// One entry of a listing with attributes (READDIRPLUS).
#[derive(Debug, Clone, Copy)]
pub struct PlusItem<'a> {
    pub next: u64,
    pub name: &'a [u8],
    pub entry: PlusEntry,
}

#[derive(Debug, Clone, Copy)]
pub enum PlusEntry {
    /// Looked up: carries one kernel reference, so the front end may let the kernel cache it.
    Linked(Attr),
    /// "." or "..": the kernel never links them, but their d_ino must not be 0 all the same
    /// (glibc skips such entries).
    Dot(Attr),
    /// Not looked up ([`Bare::Lazy`]): the inode number a lookup will give, and the type.
    Bare { ino: Ino, kind: u32 },
}

/// Whether READDIRPLUS may leave out attributes (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bare {
    /// Every entry with attributes (`readdirplus=full`).
    Never,
    Lazy,
}

/// Entries taken from the listing per lock hold, so that lookups run without it.
const BATCH: usize = 64;

/// Positions, names, inode numbers and types of one batch.
type Batch = Vec<(usize, Box<[u8]>, Ino, u32)>;

impl Overlay {
    /// List directory `ino` from `offset` into `sink`, which returns `true` once it is full
    /// (that entry was not taken).
    pub fn read_dir(
        &self,
        ino: Ino,
        offset: u64,
        mut sink: impl FnMut(DirItem<'_>) -> bool,
    ) -> io::Result<()> {
        let node = self.node(ino)?;
        self.ensure_listing(&node)?;
        let mut off = offset;
        if off == 0 {
            let dot = DirItem {
                ino,
                next: 1,
                kind: libc::S_IFDIR,
                name: b".",
            };
            if sink(dot) {
                return Ok(());
            }
            off = 1;
        }
        if off == 1 {
            let parent = node.parent().map_or(ROOT_INO, |p| p.ino);
            let dotdot = DirItem {
                ino: parent,
                next: 2,
                kind: libc::S_IFDIR,
                name: b"..",
            };
            if sink(dotdot) {
                return Ok(());
            }
            off = 2;
        }
        let guard = node.listing.read_recursive();
        let Some(listing) = guard.as_ref() else {
            return Ok(());
        };
        for (i, e) in listing
            .entries()
            .iter()
            .enumerate()
            .skip((off - 2) as usize)
            .filter(|(_, e)| !e.removed)
        {
            let item = DirItem {
                ino: e.ino,
                next: i as u64 + 3,
                kind: e.kind,
                name: &e.name,
            };
            if sink(item) {
                break;
            }
        }
        Ok(())
    }

    /// List directory `ino` from `offset` with attributes. Every [`PlusEntry::Linked`] entry
    /// is looked up and carries one kernel reference, given back here when the sink is full.
    pub fn read_dir_plus(
        &self,
        ino: Ino,
        offset: u64,
        bare: Bare,
        mut sink: impl FnMut(PlusItem<'_>) -> bool,
    ) -> io::Result<()> {
        let node = self.node(ino)?;
        self.ensure_listing(&node)?;
        let lazy = bare == Bare::Lazy && !self.attrs_wanted(&node);
        let mut off = offset;
        let dot = node.attr();
        if off == 0 {
            let item = PlusItem {
                next: 1,
                name: b".",
                entry: PlusEntry::Dot(dot),
            };
            if sink(item) {
                return Ok(());
            }
            off = 1;
        }
        if off == 1 {
            let mut dotdot = dot;
            dotdot.ino = node.parent().map_or(ROOT_INO, |p| p.ino);
            let item = PlusItem {
                next: 2,
                name: b"..",
                entry: PlusEntry::Dot(dotdot),
            };
            if sink(item) {
                return Ok(());
            }
            off = 2;
        }
        let mut pos = (off - 2) as usize;
        loop {
            let (batch, more): (Batch, bool) = {
                let guard = node.listing.read_recursive();
                let Some(listing) = guard.as_ref() else { break };
                let batch = listing
                    .entries()
                    .iter()
                    .enumerate()
                    .skip(pos)
                    .take(BATCH)
                    .filter(|(_, e)| !e.removed)
                    .map(|(i, e)| (i, e.name.clone(), e.ino, e.kind))
                    .collect();
                (batch, listing.entries().len() > pos + BATCH)
            };
            for (i, name, ino, kind) in batch {
                if lazy && kind != libc::S_IFDIR && self.names.node(ino).is_none() {
                    node.listed_bare.store(true, Ordering::Relaxed);
                    let item = PlusItem {
                        next: i as u64 + 3,
                        name: &name,
                        entry: PlusEntry::Bare { ino, kind },
                    };
                    if sink(item) {
                        return Ok(());
                    }
                    continue;
                }
                let child = match self.lookup_in(&node, &name) {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "readdirplus lookup");
                        continue;
                    }
                };
                let attr = self.attr(&child).unwrap_or_else(|_| child.attr());
                if attr.is_dir() {
                    // A walk is likely to list it next.
                    self.offer_lookahead(&child, !lazy);
                }
                let item = PlusItem {
                    next: i as u64 + 3,
                    name: &name,
                    entry: PlusEntry::Linked(attr),
                };
                if sink(item) {
                    // Not sent: give back the reference the lookup took.
                    self.forget(child.ino, 1);
                    return Ok(());
                }
            }
            if !more {
                break;
            }
            pos += BATCH;
        }
        Ok(())
    }

    /// Whether `dir`'s listings carry every entry's attributes: it or its parent was seen to
    /// want them (a subdirectory inherits it when listed, so a walk pays once, at its top).
    fn attrs_wanted(&self, dir: &Node) -> bool {
        if dir.attrs_wanted.load(Ordering::Relaxed) {
            return true;
        }
        let inherited = dir
            .parent()
            .is_some_and(|p| p.attrs_wanted.load(Ordering::Relaxed));
        if inherited {
            dir.attrs_wanted.store(true, Ordering::Relaxed);
        }
        inherited
    }

    /// The kernel looked up a non-directory in `parent`: if a listing left attributes out there,
    /// whoever listed it wants them after all, and most likely in the directories beside it
    /// too (`rm -rf d*`, `tar c .`), so the grandparent is marked as well.
    pub fn looked_up_in(&self, parent: Ino) {
        if let Ok(dir) = self.node(parent)
            && dir.listed_bare.load(Ordering::Relaxed)
        {
            dir.attrs_wanted.store(true, Ordering::Relaxed);
            if let Some(up) = dir.parent() {
                up.attrs_wanted.store(true, Ordering::Relaxed);
            }
        }
    }
}
