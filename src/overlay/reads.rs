//! Reading through the merged view: symlink targets, file contents (a descriptor per open
//! file, kept in a small cache, and small siblings read ahead) and extended attributes.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dashmap::DashMap;
use lru::LruCache;
use parking_lot::Mutex;

use super::inode::Node;
use super::{DEFAULT_OPEN_FILES, Ino, Overlay, errno, lookahead};
use crate::stack::whiteout;

/// How reads of a lower file are checked under `verify=on`: against record entry `entry` of
/// layer `layer` (the name `rel` it was opened by), for the file `file` (device, inode) that
/// was opened; a read through a descriptor of another file plans afresh.
#[derive(Debug, Clone)]
struct ReadPlan {
    layer: u16,
    entry: u32,
    rel: Arc<[u8]>,
    file: (u64, u64),
}

/// What reads keep between requests.
#[derive(Debug)]
pub(super) struct Reads {
    /// Layer files opened for reads, bounded: the kernel does not send OPEN in no-open mode,
    /// so reads find their descriptor here.
    files: Mutex<LruCache<Ino, Arc<OwnedFd>>>,
    /// Under `verify=on`, how each lower file read so far is checked as read (see
    /// [`crate::stack::layer::Layer::read_plan`]): found once per file, not per read.
    plans: DashMap<Ino, ReadPlan>,
    /// Lower layers are checked against their records (`verify=on`).
    verifying: bool,
}

impl Reads {
    pub(super) fn new(verifying: bool) -> Reads {
        Reads {
            files: Mutex::new(LruCache::new(
                NonZeroUsize::new(DEFAULT_OPEN_FILES).expect("nonzero"),
            )),
            plans: DashMap::new(),
            verifying,
        }
    }

    /// Keep at most `n` files open.
    pub(super) fn set_limit(&self, n: usize) {
        self.files
            .lock()
            .resize(NonZeroUsize::new(n.max(1)).expect("nonzero"));
    }

    /// The node went: its descriptor and plan go with it.
    pub(super) fn evict(&self, ino: Ino) {
        self.files.lock().pop(&ino);
        if self.verifying {
            self.plans.remove(&ino);
        }
    }
}

impl Overlay {
    pub fn readlink(&self, ino: Ino) -> io::Result<Vec<u8>> {
        let node = self.node(ino)?;
        if node.attr().kind() != libc::S_IFLNK {
            return Err(errno(libc::EINVAL));
        }
        self.top_layer(&node).readlink(&node.path())
    }

    /// Open the file behind a node for reading (the top layer's copy).
    pub fn open_file(&self, node: &Node) -> io::Result<OwnedFd> {
        match node.attr().kind() {
            libc::S_IFREG => {
                let layer = self.top_layer(node);
                let fd = layer.open_read(&node.path())?;
                if self.reads.verifying && self.is_lower(node.top()) {
                    self.plan_reads(node, &fd)?;
                }
                if let Some(t) = self.tally() {
                    t.file_opened(layer.index);
                }
                Ok(fd)
            }
            libc::S_IFDIR => Err(errno(libc::EISDIR)),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    /// A descriptor for reading `ino`, from the bounded cache.
    pub fn cached_file(&self, ino: Ino) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = self.reads.files.lock().get(&ino) {
            return Ok(Arc::clone(fd));
        }
        let node = self.node(ino)?;
        let fd = Arc::new(self.open_file(&node)?);
        self.reads.files.lock().put(ino, Arc::clone(&fd));
        self.offer_siblings(&node);
        Ok(fd)
    }

    /// A file of a lower layer is read for the first time: have look-ahead read its small
    /// siblings, once per directory.
    pub(super) fn offer_siblings(&self, node: &Node) {
        let Some(la) = self.lookahead.get() else {
            return;
        };
        let Some((parent, _)) = node.link() else {
            return;
        };
        if parent.siblings_offered.swap(true, Ordering::Relaxed) {
            return;
        }
        let layers = parent.state.read().layers.clone();
        let path = parent.path();
        for l in layers {
            if self.is_lower(l) && self.layers[l as usize].cvmfs.is_none() {
                la.offer(lookahead::Job::Warm {
                    layer: l,
                    rel: path.clone(),
                    siblings: true,
                });
            }
        }
    }

    /// Drop a cached descriptor (the node was forgotten).
    pub fn evict_file(&self, ino: Ino) {
        self.reads.evict(ino);
        if let Some(u) = &self.upper {
            u.drop_dir(ino);
        }
    }

    /// Read from `fd` at `offset` until `buf` is full or the file ends.
    pub fn read_at(fd: &OwnedFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        crate::stack::layer::read_at(fd, buf, offset)
    }

    /// Read file `ino` through `fd` (from [`Overlay::open_file`] or the cache): under
    /// `verify=on` a lower file's read is checked against the record entry of the name it
    /// was opened by (see [`Overlay::plan_reads`]), whatever file `fd` is now.
    pub fn read_file(
        &self,
        ino: Ino,
        fd: &OwnedFd,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<usize> {
        if !self.reads.verifying {
            return Self::read_at(fd, buf, offset);
        }
        let st = rustix::fs::fstat(fd)?;
        let plan = self.reads.plans.get(&ino).map(|p| p.clone());
        let planned = |p: &ReadPlan, buf: &mut [u8]| {
            self.layers[p.layer as usize].read_planned(p.entry, &p.rel, (fd, &st), buf, offset)
        };
        if let Some(p) = plan.as_ref().filter(|p| p.file == (st.st_dev, st.st_ino)) {
            return planned(p, buf);
        }
        let node = self.node(ino)?;
        let top = node.top();
        if self.is_lower(top) {
            let p = self.plan_reads(&node, fd)?;
            return planned(&p, buf);
        }
        // The writable layer's copy …
        let up = self.layers[0].stat(&node.path())?;
        if up.is_some_and(|u| (u.st_dev, u.st_ino) == (st.st_dev, st.st_ino)) {
            return Self::read_at(fd, buf, offset);
        }
        // … or a descriptor of the lower file, opened before the copy-up (it keeps reading
        // that one, as on kernel overlayfs): checked as it was planned when opened.
        match plan {
            Some(p) => planned(&p, buf),
            None => {
                tracing::error!(
                    ino,
                    "verify: a read through a descriptor of no known file: refused"
                );
                Err(errno(libc::EIO))
            }
        }
    }

    /// Under `verify=on`, note how reads of the lower file `node` opened as `fd` are checked:
    /// against the record entry of its name now, in its top layer.
    fn plan_reads(&self, node: &Node, fd: &OwnedFd) -> io::Result<ReadPlan> {
        let top = node.top();
        let rel = node.path();
        let st = rustix::fs::fstat(fd)?;
        let entry = self.layers[top as usize]
            .read_plan(&rel)?
            .unwrap_or(u32::MAX);
        let p = ReadPlan {
            layer: top,
            entry,
            rel: Arc::from(rel.as_slice()),
            file: (st.st_dev, st.st_ino),
        };
        self.reads.plans.insert(node.ino, p.clone());
        Ok(p)
    }

    /// Whether the kernel may read `node`'s open file straight from its layer (passthrough):
    /// not when its blocks are still to be checked as they are read.
    pub fn may_pass_through(&self, node: &Node) -> bool {
        !self.reads.verifying || self.top_layer(node).may_pass_through(&node.path())
    }

    /// Xattr names of a node, overlay-internal ones removed; NUL-separated.
    pub fn list_xattrs(&self, ino: Ino) -> io::Result<Vec<u8>> {
        let node = self.node(ino)?;
        let raw = self.xattr_names(&node)?;
        let mut out = Vec::with_capacity(raw.len());
        for name in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if !self.is_hidden_xattr(name) {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Overlay-internal xattrs, and the override xattr where it carries the presented stat.
    pub(super) fn is_hidden_xattr(&self, name: &[u8]) -> bool {
        whiteout::is_internal_xattr(name)
            || self.ids.override_xattr.is_some_and(|x| x.name() == name)
    }

    pub fn get_xattr(&self, ino: Ino, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if self.is_hidden_xattr(name) {
            return Ok(None);
        }
        let node = self.node(ino)?;
        if !self
            .xattr_names(&node)?
            .split(|&b| b == 0)
            .any(|n| n == name)
        {
            return Ok(None);
        }
        self.top_layer(&node).get_xattr(&node.path(), name)
    }

    /// The top copy's xattr names, NUL-separated: cached on the node until a change.
    fn xattr_names(&self, node: &Node) -> io::Result<Arc<[u8]>> {
        let (generation, cached) = node.cached_xattr_names();
        if let Some(names) = cached {
            return Ok(names);
        }
        // An open copy in the writable layer is read without a path walk (the kernel asks
        // for security.capability before a new file's first write and before its chown).
        let names: Arc<[u8]> = match node.upper_fd() {
            Some(fd) => crate::stack::layer::list_xattrs_fd(&fd)?.into(),
            None => self.top_layer(node).list_xattrs(&node.path())?.into(),
        };
        node.store_xattr_names(generation, Arc::clone(&names));
        Ok(names)
    }
}
