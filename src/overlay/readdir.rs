//! Reading a merged directory from an offset into a front end's sink. The offset scheme is
//! the core's: 1 = ".", 2 = "..", 3 + i = listing position i, fixed for the life of the
//! listing (see [`super::dir`]).

use std::io;

use super::Overlay;
use super::inode::{Attr, Ino, ROOT_INO};

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
    pub attr: Attr,
    /// The entry carries a kernel reference (every entry but "." and ".."), so the front end
    /// may let the kernel cache it.
    pub counted: bool,
}

/// Entries taken from the listing per lock hold, so that lookups run without it.
const BATCH: usize = 64;

/// Positions and names of one batch.
type Batch = Vec<(usize, Box<[u8]>)>;

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

    /// List directory `ino` from `offset` with attributes. Every entry but "." and ".." is
    /// looked up and carries one kernel reference, given back here when the sink is full.
    pub fn read_dir_plus(
        &self,
        ino: Ino,
        offset: u64,
        mut sink: impl FnMut(PlusItem<'_>) -> bool,
    ) -> io::Result<()> {
        let node = self.node(ino)?;
        self.ensure_listing(&node)?;
        let mut off = offset;
        // The kernel never links "." and ".." from READDIRPLUS, so they take no reference;
        // their d_ino must not be 0 all the same (glibc skips such entries).
        let dot = node.attr();
        if off == 0 {
            let item = PlusItem {
                next: 1,
                name: b".",
                attr: dot,
                counted: false,
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
                attr: dotdot,
                counted: false,
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
                    .map(|(i, e)| (i, e.name.clone()))
                    .collect();
                (batch, listing.entries().len() > pos + BATCH)
            };
            for (i, name) in batch {
                let child = match self.lookup_in(&node, &name) {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "readdirplus lookup");
                        continue;
                    }
                };
                let attr = self.attr(&child).unwrap_or_else(|_| child.attr());
                let item = PlusItem {
                    next: i as u64 + 3,
                    name: &name,
                    attr,
                    counted: true,
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
}
