//! The overlay core: lookup across layers, whiteout rules, merged listings, reads.
//! Plain Rust; every front end (the FUSE session in `mount`, over /dev/fuse or io_uring)
//! drives it through [`Overlay`].

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub mod acl;
pub mod atime;
pub mod attrs;
mod config;
pub mod copyup;
pub mod dir;
pub mod error;
pub mod idmap;
pub mod inode;
pub mod lookahead;
pub mod namespace;
pub mod prefetch;
pub mod readdir;
pub mod reads;
pub mod upper;
pub mod write;
#[cfg(test)]
mod write_tests;

pub use error::Error;

use crate::stack::resolve;
use crate::stack::whiteout::{self, Marker};
use crate::stack::{Layer, LayerError, join};
use config::{verified_cache, verifier_of};
use dir::Listing;
use idmap::IdMap;
use inode::{Attr, Ino, LayerList, Node, NodeState, ROOT_INO};
use namespace::Namespace;
use upper::Upper;

pub(crate) fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Default bound on layer files kept open for reading.
pub const DEFAULT_OPEN_FILES: usize = 1024;

pub use config::{Config, VerifyConfig};
pub use namespace::Stale;

pub struct Overlay {
    /// The stack, top first; with a writable layer it is `layers[0]`.
    layers: Vec<Layer>,
    upper: Option<Upper>,
    read_only: bool,
    ids: IdMap,
    /// Inode table, number remaps, what the kernel must forget (a copy-up makes a directory
    /// merged, or separates hard links) and the namespace lock.
    names: Namespace,
    /// Per layer: index of its filesystem among the distinct ones of the stack.
    dev_index: Vec<u64>,
    single_dev: bool,
    /// Layer files open for reads, and how reads are checked under `verify=on`.
    reads: reads::Reads,
    forgotten: AtomicU64,
    /// Background readers of subdirectories of listed directories, when started.
    lookahead: std::sync::OnceLock<lookahead::Lookahead>,
    /// The mount's atime options.
    atime: atime::AtimePolicy,
    /// Whoever counts what the overlay does (a mount's metrics), once set.
    tally: std::sync::OnceLock<Arc<dyn Tally>>,
}

/// What the overlay counts, for whoever watches it (a front end's metrics).
pub trait Tally: Send + Sync {
    /// A file's content was opened, in layer `layer` (the stack's index, upper first).
    fn file_opened(&self, layer: usize);
    /// An entry was copied up into the writable layer.
    fn copied_up(&self);
    /// Layer answers refused by verification, and bytes hashed to check them.
    fn verified(&self, failures: u64, bytes: u64);
}

/// Release freed memory to the system after this many nodes went.
const TRIM_EVERY: u64 = 16384;

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("layers", &self.layers)
            .field("nodes", &self.names.live())
            .finish()
    }
}

impl Overlay {
    /// Open every layer root (top first). Nothing below the roots is touched.
    pub fn new(lowerdirs: &[PathBuf]) -> Result<Overlay, Error> {
        Overlay::with_config(&Config {
            lowerdirs: lowerdirs.to_vec(),
            fsync: true,
            ..Config::default()
        })
    }

    /// Open the stack of `cfg`, the writable layer (if any) on top.
    pub fn with_config(cfg: &Config) -> Result<Overlay, Error> {
        if cfg.lowerdirs.is_empty() {
            return Err(Error::NoLowerdir);
        }
        let mut layers = Vec::with_capacity(cfg.lowerdirs.len() + 1);
        let mut upper = None;
        if let Some((u, w)) = &cfg.upper {
            let l = Layer::open(0, u).map_err(Error::Upper)?;
            upper = Some(Upper::open(&l, w, cfg.fsync, cfg.resume)?);
            layers.push(l);
        }
        let cache = cfg.verify.as_ref().and_then(verified_cache);
        let trust = match &cfg.verify {
            Some(v) if !v.trust.is_empty() => {
                Some(crate::stack::trust::TrustedKeys::load(&v.trust).map_err(Error::Trust)?)
            }
            _ => None,
        };
        for p in &cfg.lowerdirs {
            let mut l = Layer::open(layers.len(), p).map_err(Error::Lower)?;
            if cfg.verify.is_some() {
                l.set_verifier(verifier_of(&l, cache.clone(), trust.as_ref())?);
            }
            layers.push(l);
        }
        let mut devs: Vec<u64> = Vec::new();
        let dev_index = layers
            .iter()
            .map(|l| match devs.iter().position(|&d| d == l.dev) {
                Some(i) => i as u64,
                None => {
                    devs.push(l.dev);
                    (devs.len() - 1) as u64
                }
            })
            .collect();
        let top = &layers[0];
        let st = top
            .stat(b"")
            .and_then(|s| s.ok_or_else(|| errno(libc::ENOENT)))
            .map_err(|e| {
                Error::Lower(LayerError::Open {
                    path: top.path.clone(),
                    source: e,
                })
            })?;
        let mut attr = Attr::from_stat(ROOT_INO, &st);
        if layers.len() > 1 {
            attr.nlink = 1; // a merged directory, as for every other one
        }
        cfg.ids.present(&mut attr, None);
        let root = Node::new(
            ROOT_INO,
            None,
            NodeState {
                layers: (0..layers.len() as u16).collect(),
                attr,
                real: ROOT_INO,
            },
        );
        Ok(Overlay {
            single_dev: devs.len() == 1,
            layers,
            upper,
            read_only: cfg.read_only,
            ids: cfg.ids.clone(),
            dev_index,
            forgotten: AtomicU64::new(0),
            names: Namespace::new(root),
            reads: reads::Reads::new(cfg.verify.is_some()),
            lookahead: std::sync::OnceLock::new(),
            tally: std::sync::OnceLock::new(),
            atime: if cfg.read_only {
                atime::AtimePolicy {
                    mode: atime::Atime::Never,
                    nodiratime: true,
                }
            } else {
                cfg.atime
            },
        })
    }

    /// Take what the kernel must forget (see [`Stale`]).
    pub fn take_stale(&self) -> Stale {
        self.names.take_stale()
    }

    /// Whether the mount has a writable layer.
    pub fn writable(&self) -> bool {
        self.upper.is_some() && !self.read_only
    }

    /// The mount ends: leave the work directory as empty as it was found.
    pub fn unmounted(&self) {
        if let Some(u) = &self.upper {
            u.unmounted();
        }
    }

    /// Whether stack index `l` is a read-only layer (not the writable one).
    fn is_lower(&self, l: u16) -> bool {
        !(self.upper.is_some() && l == 0)
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Set how many layer files stay open for reads.
    /// Count what the overlay does in `t` (set once; later calls are ignored).
    pub fn set_tally(&self, t: Arc<dyn Tally>) {
        for v in self.layers.iter().filter_map(|l| l.verifier()) {
            let t = Arc::clone(&t);
            v.set_counter(Arc::new(move |failures, bytes| t.verified(failures, bytes)));
        }
        let _ = self.tally.set(t);
    }

    fn tally(&self) -> Option<&dyn Tally> {
        self.tally.get().map(|t| t.as_ref())
    }

    pub fn set_open_file_limit(&self, n: usize) {
        self.reads.set_limit(n);
    }

    /// The mount's inode number for a real inode of `layer`, overlayfs "xino" style: with all
    /// layers on one filesystem the real number itself (so hard links across names agree with
    /// the kernel's overlay), otherwise the filesystem's index in the high bits.
    pub fn compose_ino(&self, layer: &Layer, real: u64) -> Ino {
        const LOW: u32 = 48;
        let ino = if self.single_dev {
            real
        } else if real < (1 << LOW) {
            (self.dev_index[layer.index] << LOW) | real
        } else {
            // Does not fit: a stable hash, kept away from the composed range.
            let h = real
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(self.dev_index[layer.index]);
            h | (1 << 63)
        };
        match ino {
            0 | ROOT_INO => (1 << 63) | 0x5eed | ino,
            i => i,
        }
    }

    pub fn node(&self, ino: Ino) -> io::Result<Arc<Node>> {
        self.names.node(ino).ok_or_else(|| errno(libc::ESTALE))
    }

    pub fn live_nodes(&self) -> usize {
        self.names.live()
    }

    pub fn getattr(&self, ino: Ino) -> io::Result<Attr> {
        let node = self.node(ino)?;
        self.attr(&node)
    }

    /// Current attributes of a node. Lower layers never change, so theirs are kept; an entry of
    /// the writable layer is stat'ed again, since writes change it.
    pub fn attr(&self, node: &Node) -> io::Result<Attr> {
        let (top, merged, cached) = {
            let s = node.state.read();
            (s.layers[0], s.layers.len() > 1, s.attr)
        };
        if top != 0 || self.upper.is_none() {
            return Ok(cached);
        }
        let st = if node.is_detached() {
            match node.any_open_fd() {
                Some(fd) => {
                    // A parked file's link in W is not one the caller can see.
                    let mut st = rustix::fs::fstat(&*fd)?;
                    if self.is_parked(node.ino) {
                        st.st_nlink = 0;
                    }
                    st
                }
                None => return Ok(Attr { nlink: 0, ..cached }),
            }
        } else if let Some(fd) = cached
            .is_dir()
            .then(|| self.upper.as_ref().and_then(|u| u.peek_dir(node.ino)))
            .flatten()
        {
            // A directory being written in (an untar's, an rm -rf's): the kernel re-reads its
            // attributes after every change in it; its open descriptor spares the path walk.
            rustix::fs::fstat(&*fd)?
        } else {
            match self.layers[0].stat(&node.path())? {
                Some(st) => st,
                None => return Ok(cached),
            }
        };
        Ok(self.fresh_attr(node, &st, merged))
    }

    /// The attributes of a writable-layer entry read through `fd`, an open descriptor of it.
    fn attr_by_fd(&self, node: &Node, fd: &OwnedFd) -> io::Result<Attr> {
        let merged = node.state.read().layers.len() > 1;
        Ok(self.fresh_attr(node, &rustix::fs::fstat(fd)?, merged))
    }

    /// Attributes from a fresh stat of the writable layer's copy; kept as the node's.
    fn fresh_attr(&self, node: &Node, st: &rustix::fs::Stat, merged: bool) -> Attr {
        let mut a = Attr::from_stat(node.ino, st);
        if a.is_dir() && merged {
            a.nlink = 1;
        }
        self.present(&mut a, 0, &node.path());
        node.state.write().attr = a;
        a
    }

    /// Apply the mount's ownership view to attributes of `rel` in layer `layer`.
    fn present(&self, a: &mut Attr, layer: u16, rel: &[u8]) {
        if self.ids.is_identity() {
            return;
        }
        let ov = match self.ids.override_xattr {
            Some(x) => self.layers[layer as usize]
                .get_xattr(rel, x.name())
                .ok()
                .flatten(),
            None => None,
        };
        self.ids.present(a, ov.as_deref());
    }

    /// Resolve `name` in directory `parent`. `Ok(None)` is a negative entry. A returned node
    /// carries one more kernel reference.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> io::Result<Option<Arc<Node>>> {
        let dir = self.node(parent)?;
        self.lookup_in(&dir, name)
    }

    pub fn lookup_in(&self, dir: &Arc<Node>, name: &[u8]) -> io::Result<Option<Arc<Node>>> {
        if !dir.attr().is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        if name.len() > 255 {
            return Err(errno(libc::ENAMETOOLONG));
        }
        if whiteout::classify(name) != Marker::Entry || name == b"." || name == b".." {
            return Ok(None);
        }
        let _ns = self.names.reading();
        self.lookup_locked(dir, name)
    }

    /// `lookup_in` for callers that hold the namespace lock.
    fn lookup_locked(&self, dir: &Arc<Node>, name: &[u8]) -> io::Result<Option<Arc<Node>>> {
        let Some((layers, st)) = self.resolve(dir, name, false)? else {
            return Ok(None);
        };
        Ok(Some(self.node_for(dir, name, layers, &st)))
    }

    /// The node of `name` under `dir`, found in `layers` (top first) with the top entry's
    /// stat `st`; one more kernel reference.
    fn node_for(
        &self,
        dir: &Arc<Node>,
        name: &[u8],
        layers: LayerList,
        st: &rustix::fs::Stat,
    ) -> Arc<Node> {
        let top = &self.layers[layers[0] as usize];
        let real = self.compose_ino(top, st.st_ino);
        let mut ino = self.names.number_of(real);
        loop {
            let make = || {
                let mut attr = Attr::from_stat(ino, st);
                // As overlayfs: counting subdirectories of a merged dir is not worth it.
                if attr.is_dir() && layers.len() > 1 {
                    attr.nlink = 1;
                }
                self.present(&mut attr, layers[0], &join(&dir.path(), name));
                Node::new(
                    ino,
                    Some((Arc::clone(dir), name.into())),
                    NodeState {
                        layers: layers.clone(),
                        attr,
                        real,
                    },
                )
            };
            let accept = |n: &Node| {
                n.state.read().real == real
                    && !n.is_detached()
                    && self.same_in_record(layers[0], n, dir, name)
            };
            if let Some(node) = self.names.find_or_make(ino, make, accept) {
                if !node.attr().is_dir() {
                    node.add_name(dir, name); // a hard link seen under another name
                }
                return node;
            }
            // The number still belongs to another (unlinked or copied-up) file the kernel
            // holds: give this one a number of its own, remembered while the mount lives.
            ino = self.names.renumber(real);
        }
    }

    /// Under `verify=on`, whether `name` in `dir` may be taken as another name of node `n`
    /// (a hard link): only when the layer's record gives both the same content, else a name
    /// made a hard link to another file after conversion would read as that file.
    fn same_in_record(&self, layer: u16, n: &Node, dir: &Node, name: &[u8]) -> bool {
        let Some(v) = self.layers[layer as usize].verifier() else {
            return true;
        };
        if n.attr().is_dir() {
            return true;
        }
        let (a, b) = (n.path(), join(&dir.path(), name));
        a == b || v.same_content(&a, &b)
    }

    /// The layers holding `name` under `dir` (top first) and the top entry's stat.
    /// With `lower_only`, as if the writable layer did not hold `name`: what a removal of the
    /// upper entry would uncover.
    fn resolve(
        &self,
        dir: &Arc<Node>,
        name: &[u8],
        lower_only: bool,
    ) -> io::Result<Option<(LayerList, rustix::fs::Stat)>> {
        let mut dir_layers = dir.layers();
        if lower_only {
            dir_layers.retain(|l| *l != 0 || self.upper.is_none());
        }
        let mut start = 0;
        let listing = if lower_only {
            None
        } else {
            Some(dir.listing.read_recursive())
        };
        if let Some(listing) = listing.as_ref().and_then(|l| l.as_ref()) {
            // The listing already knows which names exist and where the topmost one is.
            // And whether a layer below it holds the name at all: if not, the lookup looks at
            // one layer, not at every one for the name, its whiteout and an opaque marker.
            match listing.find(name) {
                None => return Ok(None),
                Some(e) => {
                    if let Some(i) = dir_layers.iter().position(|&l| l == e.top) {
                        start = i;
                        if !e.below {
                            dir_layers.truncate(i + 1);
                        }
                    }
                }
            }
        }
        resolve::child(&self.layers, &dir_layers[start..], &dir.path(), name)
    }

    /// Drop `n` kernel references to `ino`; whether the node went.
    pub fn forget(&self, ino: Ino, n: u64) -> bool {
        let gone = self.names.forget(ino, n);
        if gone {
            self.evict_file(ino);
            // After the kernel drops its caches, give the freed nodes and listings back to the
            // system instead of keeping them in malloc's free lists.
            if self.forgotten.fetch_add(1, Ordering::Relaxed) % TRIM_EVERY == TRIM_EVERY - 1 {
                // SAFETY: malloc_trim only releases free heap memory.
                unsafe { libc::malloc_trim(0) };
            }
        }
        gone
    }

    /// Take up node `ino`, a file removed while open that a dead server parked in W: a node
    /// with no name, and the file opened read-write for the handle being restored.
    pub fn adopt_parked(&self, ino: Ino) -> io::Result<OwnedFd> {
        let upper = self.upper.as_ref().ok_or_else(|| errno(libc::ESTALE))?;
        let (fd, st) = upper.adopt_parked(ino).map_err(|_| errno(libc::ESTALE))?;
        let real = self.compose_ino(&self.layers[0], st.st_ino);
        let made = || {
            let node = Node::new(
                ino,
                None,
                NodeState {
                    layers: std::iter::once(0).collect(),
                    attr: Attr::from_stat(ino, &st),
                    real,
                },
            );
            node.set_detached();
            node
        };
        if let Some(node) = self.names.find_or_make(ino, made, |_| true) {
            self.names.hold(&node);
        }
        Ok(fd)
    }

    /// No handle of `ino` is left: a parked file goes.
    pub fn unpark(&self, ino: Ino) {
        if let Some(u) = &self.upper {
            u.unpark(ino);
        }
    }

    pub fn is_parked(&self, ino: Ino) -> bool {
        self.upper.as_ref().is_some_and(|u| u.is_parked(ino))
    }

    /// Whether the kernel's node `ino` is live here.
    pub fn has_node(&self, ino: Ino) -> bool {
        self.names.node(ino).is_some()
    }

    /// Take up node `ino`, which an earlier server told the kernel is `name` in `parent`
    /// (live here): the entry found there gets that number, and as many references as the
    /// kernel may hold (over-counting keeps a node longer; under-counting would drop one the
    /// kernel still uses). ESTALE when the name is gone or is another file now.
    pub fn adopt(&self, parent: Ino, name: &[u8], ino: Ino) -> io::Result<()> {
        let dir = self.node(parent)?;
        let _ns = self.names.reading();
        let Some((layers, st)) = self.resolve(&dir, name, false)? else {
            return Err(errno(libc::ESTALE));
        };
        let real = self.compose_ino(&self.layers[layers[0] as usize], st.st_ino);
        if self.names.number_of(real) != ino {
            self.names.keep_number(real, ino);
        }
        let node = self.node_for(&dir, name, layers, &st);
        if node.ino != ino {
            self.forget(node.ino, 1);
            return Err(errno(libc::ESTALE));
        }
        self.names.hold(&node);
        Ok(())
    }

    /// Build the merged listing of a directory if it has none yet; it is kept while the node
    /// lives and changed in place by writes.
    pub fn ensure_listing(&self, dir: &Node) -> io::Result<()> {
        if dir.listing.read_recursive().is_some() {
            return Ok(());
        }
        let _ns = self.names.reading();
        self.ensure_listing_locked(dir)
    }

    fn ensure_listing_locked(&self, dir: &Node) -> io::Result<()> {
        if dir.listing.read_recursive().is_some() {
            return Ok(());
        }
        let listing = self.build_listing(dir)?;
        let mut slot = dir.listing.write();
        if slot.is_none() {
            *slot = Some(listing);
        }
        Ok(())
    }

    /// Merge `dir` over its layers as they are now (the caller decides whether to keep it).
    fn build_listing(&self, dir: &Node) -> io::Result<Listing> {
        let state = dir.state.read().clone();
        if !state.attr.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        Listing::build(&self.layers, &state.layers, &dir.path(), |layer, real| {
            self.names.number_of(self.compose_ino(layer, real))
        })
    }

    /// Build `dir`'s merged listing for look-ahead, without the namespace lock (so no write
    /// waits on it): the namespace count it started from, and the listing. `None` if the
    /// directory has one already or cannot be listed.
    fn listing_ahead(&self, dir: &Node) -> Option<(u64, Listing)> {
        let before = *self.names.reading();
        if dir.listing.read_recursive().is_some() {
            return None;
        }
        Some((before, self.build_listing(dir).ok()?))
    }

    /// Store a listing built by [`Self::listing_ahead`] unless the namespace changed since
    /// (it may be stale then) or the directory got one meanwhile. Never waits for the lock.
    fn keep_listing_ahead(&self, dir: &Node, before: u64, listing: Listing) -> bool {
        let Some(ns) = self.names.try_reading() else {
            return false;
        };
        if *ns != before {
            return false;
        }
        let mut slot = dir.listing.write();
        if slot.is_some() {
            return false;
        }
        *slot = Some(listing);
        true
    }

    /// `dir` was just listed in its parent: have look-ahead build its listing, and when
    /// `stats` (the listing's entries will carry attributes) read its lower directories and
    /// stat their entries, so the next READDIRPLUS finds all of it done or cached.
    fn offer_lookahead(&self, dir: &Arc<Node>, stats: bool) {
        let Some(la) = self.lookahead.get() else {
            return;
        };
        if dir.listing.read_recursive().is_some() {
            return;
        }
        la.offer(lookahead::Job::Listing(Arc::downgrade(dir)));
        if stats {
            let path = dir.path();
            for l in dir.layers().into_iter().filter(|l| self.is_lower(*l)) {
                la.offer(lookahead::Job::Warm {
                    layer: l,
                    rel: path.clone(),
                    siblings: false,
                });
            }
        }
    }

    /// Run `f` on the directory's merged listing.
    pub fn with_listing<R>(&self, dir: &Node, f: impl FnOnce(&Listing) -> R) -> io::Result<R> {
        self.ensure_listing(dir)?;
        let guard = dir.listing.read_recursive();
        Ok(f(guard.as_ref().expect("just built")))
    }

    /// Where the content of `ino` comes from: its path and the stack index of its top layer
    /// (for access logs).
    pub fn origin(&self, ino: Ino) -> Option<(Vec<u8>, u16)> {
        let node = self.node(ino).ok()?;
        let layer = node.top();
        Some((node.path(), layer))
    }

    /// The stack index of the layer `ino`'s content comes from.
    pub fn layer_of(&self, ino: Ino) -> Option<usize> {
        self.node(ino).ok().map(|n| n.top() as usize)
    }

    /// A front end opened `ino` as `fd`: an unlinked file's attributes come from it, and
    /// changes of an open writable-layer file go through it (see [`Node::upper_fd`]).
    pub fn opened(&self, ino: Ino, fd: &Arc<OwnedFd>) {
        if let Ok(node) = self.node(ino) {
            let mut slot = node.open_fd.lock();
            // Under the slot's lock, so the flag always describes the descriptor beside it.
            let upper = self.upper.is_some() && node.top() == 0;
            *slot = (Arc::downgrade(fd), upper);
        }
    }

    fn top_layer(&self, node: &Node) -> &Layer {
        &self.layers[node.state.read().layers[0] as usize]
    }

    pub fn statfs(&self) -> io::Result<rustix::fs::StatVfs> {
        self.layers[0].statvfs()
    }

    /// access(2) against the merged attributes.
    pub fn access(&self, ino: Ino, mask: i32, uid: u32, gid: u32) -> io::Result<()> {
        let attr = self.getattr(ino)?;
        if mask == libc::F_OK {
            return Ok(());
        }
        if mask & libc::W_OK != 0 && !self.writable() {
            return Err(errno(libc::EROFS));
        }
        let mode = attr.mode;
        let granted = if uid == 0 {
            let any_x = mode & 0o111 != 0 || attr.is_dir();
            libc::R_OK | libc::W_OK | if any_x { libc::X_OK } else { 0 }
        } else {
            let bits = if uid == attr.uid {
                mode >> 6
            } else if gid == attr.gid {
                mode >> 3
            } else {
                mode
            } & 0o7;
            bits as i32
        };
        if mask & !granted & (libc::R_OK | libc::W_OK | libc::X_OK) != 0 {
            return Err(errno(libc::EACCES));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
