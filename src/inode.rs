//! The inode table: one node per merged inode the kernel references.
//!
//! Inode numbers are derived from the real inode of the entry's top layer (see
//! [`crate::overlay::Overlay::compose_ino`]), so they are unique, stable for the life of the mount
//! even across FORGET, and hard links inside a layer share theirs. A node lives from its first
//! LOOKUP (or READDIRPLUS entry) until the kernel forgets every reference to it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use parking_lot::RwLock;
use smallvec::SmallVec;

use crate::dir::Listing;

pub type Ino = u64;
/// The kernel's fixed number for the mount root.
pub const ROOT_INO: Ino = 1;

/// Attributes of a merged inode, independent of any front end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Attr {
    pub fn from_stat(ino: Ino, st: &rustix::fs::Stat) -> Attr {
        Attr {
            ino,
            mode: st.st_mode,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            blksize: st.st_blksize as u32,
            atime: (st.st_atime, st.st_atime_nsec as u32),
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime, st.st_ctime_nsec as u32),
        }
    }

    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
}

/// Indexes into the layer stack, top first. Directories list every layer they are merged from.
pub type LayerList = SmallVec<[u16; 2]>;

/// What a node is made of; behind a lock so that a writable layer can change it later.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub layers: LayerList,
    pub attr: Attr,
}

#[derive(Debug)]
pub struct Node {
    pub ino: Ino,
    /// Parent and name in the merged tree; `None` for the root. Holding the parent keeps the
    /// path computable even if the kernel forgets the parent first.
    loc: Option<(Arc<Node>, Box<[u8]>)>,
    pub state: RwLock<NodeState>,
    lookups: AtomicU64,
    /// The merged listing, built on the first READDIR (or a lookup that needs it).
    pub listing: OnceLock<Arc<Listing>>,
}

impl Node {
    pub fn new(ino: Ino, loc: Option<(Arc<Node>, Box<[u8]>)>, state: NodeState) -> Node {
        Node {
            ino,
            loc,
            state: RwLock::new(state),
            lookups: AtomicU64::new(0),
            listing: OnceLock::new(),
        }
    }

    /// The node's path relative to every layer root (overlays align layers by path).
    pub fn path(&self) -> Vec<u8> {
        let mut names: SmallVec<[&[u8]; 16]> = SmallVec::new();
        let mut cur = self;
        while let Some((parent, name)) = &cur.loc {
            names.push(name);
            cur = parent;
        }
        let len = names.iter().map(|n| n.len() + 1).sum::<usize>();
        let mut p = Vec::with_capacity(len);
        for (i, n) in names.iter().rev().enumerate() {
            if i > 0 {
                p.push(b'/');
            }
            p.extend_from_slice(n);
        }
        p
    }

    pub fn parent(&self) -> Option<&Arc<Node>> {
        self.loc.as_ref().map(|(p, _)| p)
    }

    pub fn attr(&self) -> Attr {
        self.state.read().attr
    }

    pub fn layers(&self) -> LayerList {
        self.state.read().layers.clone()
    }

    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Acquire)
    }
}

/// Live nodes by inode number, sharded so that threads rarely meet on a lock.
#[derive(Debug, Default)]
pub struct InodeTable {
    nodes: DashMap<Ino, Arc<Node>>,
}

impl InodeTable {
    pub fn new(root: Node) -> InodeTable {
        let t = InodeTable::default();
        t.nodes.insert(ROOT_INO, Arc::new(root));
        t
    }

    pub fn get(&self, ino: Ino) -> Option<Arc<Node>> {
        self.nodes.get(&ino).map(|n| Arc::clone(n.value()))
    }

    /// Return the live node for `ino`, creating it with `make` if there is none, and count one
    /// more kernel reference to it. The count changes under the shard lock that `forget` takes,
    /// so a node is never dropped while a lookup is handing it out.
    pub fn lookup_ref(&self, ino: Ino, make: impl FnOnce() -> Node) -> Arc<Node> {
        let entry = self.nodes.entry(ino).or_insert_with(|| Arc::new(make()));
        entry.lookups.fetch_add(1, Ordering::AcqRel);
        Arc::clone(entry.value())
    }

    /// Drop `n` kernel references; the node goes when none are left.
    /// Returns whether the node went.
    pub fn forget(&self, ino: Ino, n: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        self.nodes
            .remove_if(&ino, |_, node| {
                let before = node
                    .lookups
                    .fetch_sub(n.min(node.lookups()), Ordering::AcqRel);
                before <= n
            })
            .is_some()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}
