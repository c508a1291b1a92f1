//! The inode table: one node per merged inode the kernel references.
//!
//! Inode numbers are derived from the real inode of the entry's top layer (see
//! [`crate::overlay::Overlay::compose_ino`]), so they are unique, stable for the life of the mount
//! even across FORGET, and hard links inside a layer share theirs. A node lives from its first
//! LOOKUP (or READDIRPLUS entry) until the kernel forgets every reference to it.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;

use crate::overlay::dir::Listing;

pub type Ino = u64;
/// The kernel's fixed number for the mount root.
pub const ROOT_INO: Ino = 1;

/// Attributes of a merged inode, independent of any front end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// What a node is made of; changed by copy-up and by writes to the upper layer.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub layers: LayerList,
    pub attr: Attr,
    /// The composed inode number of the top layer's entry: the node's identity on disk, which
    /// changes on copy-up while `ino` (the kernel's handle) stays.
    pub real: Ino,
}

/// One name of a node: its parent directory and its name there.
pub type Link = (Arc<Node>, Box<[u8]>);

#[derive(Debug)]
pub struct Node {
    pub ino: Ino,
    /// Names in the merged tree, the first used for layer paths; empty for the root. Hard
    /// links give a node several. Holding the parent keeps the path computable even if the
    /// kernel forgets the parent first.
    names: RwLock<SmallVec<[Link; 1]>>,
    pub state: RwLock<NodeState>,
    lookups: AtomicU64,
    /// Its last name was removed; it lives on for open descriptors only.
    detached: AtomicBool,
    /// The merged listing, built on the first READDIR (or a lookup that needs it) and kept
    /// current by the writable layer.
    pub listing: RwLock<Option<Listing>>,
    /// A descriptor of one open handle: attributes of an unlinked file come from it. The flag
    /// says it was opened on the writable layer's copy (not a lower one copied up since).
    pub open_fd: Mutex<(Weak<OwnedFd>, bool)>,
    /// Look-ahead has been asked to read this directory's small files (a file in it was read).
    pub(crate) siblings_offered: AtomicBool,
    /// A listing of this directory left out the attributes of some entries (see
    /// [`super::readdir::Bare`]).
    pub(crate) listed_bare: AtomicBool,
    /// Whoever lists this directory also looks at its entries: its listings, and those of
    /// its subdirectories, carry every entry's attributes.
    pub(crate) attrs_wanted: AtomicBool,
    /// The top copy's xattr names as last listed: the kernel asks for `security.capability`
    /// before every write and chown, and an absent name is then answered without a syscall.
    xattrs: Mutex<XattrNames>,
}

/// Cached xattr names and the generation they belong to; a change bumps the generation, so a
/// listing that raced with it is not stored.
#[derive(Debug, Default)]
struct XattrNames {
    generation: u64,
    names: Option<Arc<[u8]>>,
}

impl Node {
    pub fn new(ino: Ino, loc: Option<Link>, state: NodeState) -> Node {
        Node {
            ino,
            names: RwLock::new(loc.into_iter().collect()),
            state: RwLock::new(state),
            lookups: AtomicU64::new(0),
            detached: AtomicBool::new(false),
            listing: RwLock::new(None),
            open_fd: Mutex::new((Weak::new(), false)),
            siblings_offered: AtomicBool::new(false),
            listed_bare: AtomicBool::new(false),
            attrs_wanted: AtomicBool::new(false),
            xattrs: Mutex::new(XattrNames::default()),
        }
    }

    /// The cached xattr names (NUL-separated) if any, and the generation to store new ones at.
    pub fn cached_xattr_names(&self) -> (u64, Option<Arc<[u8]>>) {
        let x = self.xattrs.lock();
        (x.generation, x.names.clone())
    }

    /// Keep `names`, listed at generation `generation`, unless the xattrs changed since.
    pub fn store_xattr_names(&self, generation: u64, names: Arc<[u8]>) {
        let mut x = self.xattrs.lock();
        if x.generation == generation {
            x.names = Some(names);
        }
    }

    /// A write, truncate or chown happened: the filesystem drops `security.capability` then,
    /// which is the only name such a change can take away. Names known not to hold it stay.
    pub fn xattrs_after_content_change(&self) {
        let keep = {
            let x = self.xattrs.lock();
            x.names.as_ref().is_some_and(|n| {
                !n.split(|&b| b == 0)
                    .any(|name| name == b"security.capability")
            })
        };
        if !keep {
            self.xattrs_changed();
        }
    }

    /// The top copy's xattrs may have changed (set, removed, copied up, or killed by a write
    /// or chown): list them again next time.
    pub fn xattrs_changed(&self) {
        let mut x = self.xattrs.lock();
        x.generation += 1;
        x.names = None;
    }

    /// The node's path relative to every layer root (overlays align layers by path).
    pub fn path(&self) -> Vec<u8> {
        let mut segs: SmallVec<[Box<[u8]>; 16]> = SmallVec::new();
        let mut cur = self.first_link();
        while let Some((parent, name)) = cur {
            segs.push(name);
            cur = parent.first_link();
        }
        let len = segs.iter().map(|n| n.len() + 1).sum::<usize>();
        let mut p = Vec::with_capacity(len);
        for (i, n) in segs.iter().rev().enumerate() {
            if i > 0 {
                p.push(b'/');
            }
            p.extend_from_slice(n);
        }
        p
    }

    fn first_link(&self) -> Option<Link> {
        self.names
            .read()
            .first()
            .map(|(p, n)| (Arc::clone(p), n.clone()))
    }

    pub fn parent(&self) -> Option<Arc<Node>> {
        self.names.read().first().map(|(p, _)| Arc::clone(p))
    }

    /// The first name, as (parent, name).
    pub fn link(&self) -> Option<Link> {
        self.first_link()
    }

    /// Record one more name of this node (a hard link seen or made).
    pub fn add_name(&self, parent: &Arc<Node>, name: &[u8]) {
        let mut names = self.names.write();
        if !names
            .iter()
            .any(|(p, n)| p.ino == parent.ino && **n == *name)
        {
            names.push((Arc::clone(parent), name.into()));
        }
        self.detached.store(false, Ordering::Release);
    }

    /// A node made for a file that has no name any more (a parked one).
    pub fn set_detached(&self) {
        self.detached.store(true, Ordering::Release);
    }

    /// Forget one name. When it was the last, the node is detached (unlinked) but keeps its
    /// old location for messages.
    pub fn remove_name(&self, parent: Ino, name: &[u8]) {
        let mut names = self.names.write();
        if let Some(i) = names
            .iter()
            .position(|(p, n)| p.ino == parent && **n == *name)
        {
            if names.len() > 1 {
                names.remove(i);
            } else {
                self.detached.store(true, Ordering::Release);
            }
        }
    }

    /// Keep only the name (parent, name): the others were hard links of a lower file, which a
    /// copy-up separates from this one.
    /// Returns the names dropped.
    pub fn keep_only_name(&self, parent: Ino, name: &[u8]) -> Vec<(Ino, Box<[u8]>)> {
        let mut names = self.names.write();
        let dropped = names
            .iter()
            .filter(|(p, n)| !(p.ino == parent && **n == *name))
            .map(|(p, n)| (p.ino, n.clone()))
            .collect();
        names.retain(|(p, n)| p.ino == parent && **n == *name);
        dropped
    }

    /// A rename moved the name `from` to `to`.
    pub fn rename(&self, from: (Ino, &[u8]), to: (&Arc<Node>, &[u8])) {
        let mut names = self.names.write();
        match names
            .iter_mut()
            .find(|(p, n)| p.ino == from.0 && **n == *from.1)
        {
            Some(l) => *l = (Arc::clone(to.0), to.1.into()),
            None => names.insert(0, (Arc::clone(to.0), to.1.into())),
        }
    }

    pub fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }

    pub fn attr(&self) -> Attr {
        self.state.read().attr
    }

    pub fn layers(&self) -> LayerList {
        self.state.read().layers.clone()
    }

    /// The open descriptor of this node's writable-layer copy, while a handle holds one.
    pub fn upper_fd(&self) -> Option<Arc<OwnedFd>> {
        let slot = self.open_fd.lock();
        if slot.1 { slot.0.upgrade() } else { None }
    }

    /// The descriptor of any open handle of this node.
    pub fn any_open_fd(&self) -> Option<Arc<OwnedFd>> {
        self.open_fd.lock().0.upgrade()
    }

    pub fn top(&self) -> u16 {
        self.state.read().layers[0]
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
    /// so a node is never dropped while a lookup is handing it out. An existing node that
    /// `accept` refuses (another file now has its number) is left alone and `None` returned.
    pub fn lookup_ref(
        &self,
        ino: Ino,
        make: impl FnOnce() -> Node,
        accept: impl FnOnce(&Node) -> bool,
    ) -> Option<Arc<Node>> {
        let mut made = false;
        let entry = self.nodes.entry(ino).or_insert_with(|| {
            made = true;
            Arc::new(make())
        });
        if !made && !accept(entry.value()) {
            return None;
        }
        entry.lookups.fetch_add(1, Ordering::AcqRel);
        Some(Arc::clone(entry.value()))
    }

    /// Count one more kernel reference to a live node (a create or link reply).
    pub fn add_ref(&self, node: &Node) {
        if let Some(e) = self.nodes.get(&node.ino) {
            e.lookups.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Count `n` more kernel references to a live node.
    pub fn add_refs(&self, node: &Node, n: u64) {
        if let Some(e) = self.nodes.get(&node.ino) {
            e.lookups.fetch_add(n, Ordering::AcqRel);
        }
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
