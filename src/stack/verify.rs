//! Checking a layer directory against its record ([`super::record`]) as the mount reaches it:
//! every stat, listing, link target and xattr that a layer answers is compared with the
//! record, and file content before its first byte reaches a caller (whole files up to a
//! block at open, bigger ones block by block as they are read). A mismatch is EIO and one
//! log line naming the layer, the path, and what was expected and found.
//!
//! Content checked once is not checked again while the file is the same file: in this
//! process (by record entry) and on the node ([`super::verified`]), keyed by what changes
//! when the file does.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use rustix::fs::Stat;
use sha2::{Digest as _, Sha256};

use super::layer::read_at;
use super::record::{self, Entry, Hash, Record};
use super::verified::{Identity, VerifiedCache};

/// What a layer answered that its record does not hold.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    #[error("{path}: not in the record")]
    Added { path: String },
    #[error("{path}: in the record but missing")]
    Removed { path: String },
    #[error("{path}: {what}: expected {expected}, found {found}")]
    Differs {
        path: String,
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error("{path}: changed while it was checked")]
    Changing { path: String },
}

/// What a file is, as far as this process remembers checks: one fstat of the descriptor a
/// read comes through. Another file (a rename over it), or a change to its content (size,
/// mtime, ctime), is another `Quick`, and its checks start again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quick([i64; 7]);

impl Quick {
    pub fn of(fd: &OwnedFd) -> io::Result<Quick> {
        Ok(Quick::from_stat(&rustix::fs::fstat(fd)?))
    }

    /// The same, from an fstat the caller made of the descriptor.
    pub fn from_stat(st: &Stat) -> Quick {
        Quick([
            st.st_dev as i64,
            st.st_ino as i64,
            st.st_size,
            st.st_mtime,
            st.st_mtime_nsec as i64,
            st.st_ctime,
            st.st_ctime_nsec as i64,
        ])
    }
}

/// The per-file state of a big file: which blocks were checked, for which file.
struct Blocks {
    quick: Quick,
    id: Identity,
    done: Box<[AtomicU64]>,
}

/// What a check of one block found.
struct Checked {
    /// The block was read into the scratch buffer and hashed (else: known from the node's
    /// table, nothing read).
    hashed: bool,
    /// The file had not changed for a while: the check may be remembered.
    remember: bool,
}

pub struct Verifier {
    record: Record,
    /// The layer, for messages.
    label: String,
    /// Owners are the client's on a CernVM-FS layer, not the image's: only the signed
    /// catalog vouches for them there.
    check_owner: bool,
    cache: Option<Arc<VerifiedCache>>,
    /// Whole files checked, by record entry: the file they were checked as.
    whole: DashMap<u32, Quick>,
    blocks: DashMap<u32, Arc<Blocks>>,
    /// Who counts refusals and bytes hashed (a mount's metrics), once set.
    counter: std::sync::OnceLock<Counter>,
}

/// Called with (answers refused, bytes hashed).
pub type Counter = Arc<dyn Fn(u64, u64) + Send + Sync>;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("record", &self.record)
            .finish()
    }
}

fn shown(rel: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(rel))
}

fn mode_str(m: u32) -> String {
    format!("{m:o}")
}

impl Verifier {
    pub fn new(
        record: Record,
        label: String,
        check_owner: bool,
        cache: Option<Arc<VerifiedCache>>,
    ) -> Verifier {
        Verifier {
            record,
            label,
            check_owner,
            cache,
            whole: DashMap::new(),
            blocks: DashMap::new(),
            counter: std::sync::OnceLock::new(),
        }
    }

    pub fn set_counter(&self, c: Counter) {
        let _ = self.counter.set(c);
    }

    fn count(&self, failures: u64, bytes: u64) {
        if let Some(c) = self.counter.get() {
            c(failures, bytes);
        }
    }

    /// Log the mismatch and turn it into the EIO the caller gets.
    fn refuse(&self, m: Mismatch) -> io::Error {
        tracing::error!(layer = %self.label, "verification failed: {m}");
        self.count(1, 0);
        io::Error::from_raw_os_error(libc::EIO)
    }

    fn entry(&self, rel: &[u8]) -> io::Result<Entry<'_>> {
        self.record
            .lookup(rel)
            .ok_or_else(|| self.refuse(Mismatch::Added { path: shown(rel) }))
    }

    fn differs(
        &self,
        rel: &[u8],
        what: &'static str,
        expected: String,
        found: String,
    ) -> io::Error {
        self.refuse(Mismatch::Differs {
            path: shown(rel),
            what,
            expected,
            found,
        })
    }

    /// An lstat of `rel` (raw: before any owner mapping): `None` when it does not exist.
    pub fn check_stat(&self, rel: &[u8], st: Option<&Stat>) -> io::Result<()> {
        let Some(st) = st else {
            return match self.record.lookup(rel) {
                Some(_) => Err(self.refuse(Mismatch::Removed { path: shown(rel) })),
                None => Ok(()),
            };
        };
        let e = self.entry(rel)?;
        if st.st_mode != e.mode() {
            return Err(self.differs(rel, "mode", mode_str(e.mode()), mode_str(st.st_mode)));
        }
        if self.check_owner && (st.st_uid, st.st_gid) != (e.uid(), e.gid()) {
            return Err(self.differs(
                rel,
                "owner",
                format!("{}:{}", e.uid(), e.gid()),
                format!("{}:{}", st.st_uid, st.st_gid),
            ));
        }
        let size = match e.kind() {
            libc::S_IFREG => Some(st.st_size as u64),
            libc::S_IFCHR | libc::S_IFBLK => Some(st.st_rdev),
            _ => None,
        };
        if let Some(found) = size.filter(|&s| s != e.size()) {
            return Err(self.differs(rel, "size", e.size().to_string(), found.to_string()));
        }
        Ok(())
    }

    /// The names a listing of directory `rel` gave (any order).
    pub fn check_listing<'n>(
        &self,
        rel: &[u8],
        names: impl Iterator<Item = (&'n [u8], u32)>,
    ) -> io::Result<()> {
        let e = self.entry(rel)?;
        let mut found: Vec<(&[u8], u32)> = names.collect();
        found.sort_unstable();
        let mut want = e.children();
        for (name, kind) in found {
            match want.next() {
                Some(w) if w.name() == name => {
                    if kind != 0 && kind != w.kind() {
                        return Err(self.differs(
                            &crate::stack::join(rel, name),
                            "type",
                            mode_str(w.kind()),
                            mode_str(kind),
                        ));
                    }
                }
                Some(w) if w.name() < name => {
                    let path = shown(&crate::stack::join(rel, w.name()));
                    return Err(self.refuse(Mismatch::Removed { path }));
                }
                _ => {
                    let path = shown(&crate::stack::join(rel, name));
                    return Err(self.refuse(Mismatch::Added { path }));
                }
            }
        }
        if let Some(w) = want.next() {
            let path = shown(&crate::stack::join(rel, w.name()));
            return Err(self.refuse(Mismatch::Removed { path }));
        }
        Ok(())
    }

    pub fn check_target(&self, rel: &[u8], target: &[u8]) -> io::Result<()> {
        let e = self.entry(rel)?;
        if e.target() != target {
            return Err(self.differs(
                rel,
                "symlink target",
                String::from_utf8_lossy(e.target()).into_owned(),
                String::from_utf8_lossy(target).into_owned(),
            ));
        }
        Ok(())
    }

    /// One xattr's value as the layer gave it (`None`: absent). Names of the `trusted.` and
    /// `security.` namespaces that the layer does not show are not refused: an unprivileged
    /// reader cannot see them.
    pub fn check_xattr(&self, rel: &[u8], name: &[u8], value: Option<&[u8]>) -> io::Result<()> {
        let e = self.entry(rel)?;
        let want = e
            .xattrs()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v);
        match (want, value) {
            (Some(w), Some(v)) if w == v => Ok(()),
            (None, None) => Ok(()),
            (Some(_), None) if !name.starts_with(b"user.") => Ok(()),
            (w, v) => Err(self.differs(rel, "xattr", xattr_shown(name, w), xattr_shown(name, v))),
        }
    }

    /// The xattr names a layer listed (NUL-separated): each must be recorded, and every
    /// recorded `user.` name listed (other namespaces may be hidden from this reader).
    pub fn check_xattr_names(&self, rel: &[u8], names: &[u8]) -> io::Result<()> {
        let e = self.entry(rel)?;
        let recorded = e.xattrs();
        let found: Vec<&[u8]> = names.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
        let extra = found
            .iter()
            .find(|n| !recorded.iter().any(|(r, _)| r == *n));
        let missing = recorded
            .iter()
            .map(|(r, _)| *r)
            .find(|r| r.starts_with(b"user.") && !found.contains(r));
        if let Some(n) = extra {
            return Err(self.differs(
                rel,
                "xattr",
                xattr_shown(n, None),
                String::from_utf8_lossy(n).into_owned(),
            ));
        }
        if let Some(n) = missing {
            return Err(self.differs(
                rel,
                "xattr",
                String::from_utf8_lossy(n).into_owned(),
                xattr_shown(n, None),
            ));
        }
        Ok(())
    }

    /// A file of the layer was opened for reading: check it whole when it is one block or
    /// less (before the descriptor is used), or note which file it is for block checks.
    pub fn check_open(&self, rel: &[u8], fd: &OwnedFd, cvmfs: bool) -> io::Result<()> {
        let e = self.entry(rel)?;
        if e.kind() != libc::S_IFREG {
            return Ok(());
        }
        let q = Quick::of(fd)?;
        if e.by_blocks() {
            return self.state_for(&e, fd, q, cvmfs).map(|_| ());
        }
        if self.whole.get(&e.index).is_some_and(|d| *d == q) {
            return Ok(());
        }
        self.check_block(rel, &e, fd, 0, cvmfs, None, q).map(|_| ())
    }

    /// The block state of the big file at entry `e` for the file `fd` is (`q`): kept while
    /// it is the same file, made afresh otherwise.
    fn state_for(
        &self,
        e: &Entry<'_>,
        fd: &OwnedFd,
        q: Quick,
        cvmfs: bool,
    ) -> io::Result<Arc<Blocks>> {
        if let Some(b) = self.blocks.get(&e.index).filter(|b| b.quick == q) {
            return Ok(Arc::clone(&b));
        }
        let (id, _) = Identity::of(fd, cvmfs)?;
        let n = e.size().div_ceil(record::BLOCK).div_ceil(64) as usize;
        let done = (0..n).map(|_| AtomicU64::new(0)).collect();
        let b = Arc::new(Blocks { quick: q, id, done });
        self.blocks.insert(e.index, Arc::clone(&b));
        Ok(b)
    }

    /// Check a copy (a copy-up's, in the writable layer) of the file at `rel` whole: what
    /// was copied is what the record holds, whatever happened to the layer's file meanwhile.
    pub fn check_copy(&self, rel: &[u8], copy: &OwnedFd) -> io::Result<()> {
        let e = self.entry(rel)?;
        let want = e.digest().ok_or_else(|| {
            self.differs(rel, "type", mode_str(e.kind()), mode_str(libc::S_IFREG))
        })?;
        // The copy's own magic link, opened anew for reading (it was made write-only).
        let p = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(copy));
        let f = rustix::fs::open(
            p.as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let found = record::digest_of(std::fs::File::from(f))?;
        self.count(0, e.size());
        if found != want {
            let hex = |d: &record::FileDigest| match d {
                record::FileDigest::Whole(h) => record::hex(h),
                record::FileDigest::Blocks(b) => format!("{} blocks", b.len()),
            };
            return Err(self.differs(rel, "content (copy-up)", hex(&want), hex(&found)));
        }
        Ok(())
    }

    /// Whether every byte of `rel` is checked once opened: a passthrough file must be.
    pub fn checked_at_open(&self, rel: &[u8]) -> bool {
        self.record.lookup(rel).is_some_and(|e| !e.by_blocks())
    }

    /// Read `buf.len()` bytes at `offset` of the open file `rel`, checking the blocks they
    /// come from first. The bytes returned from a block checked now are the bytes hashed.
    pub fn read(
        &self,
        rel: &[u8],
        fd: &OwnedFd,
        buf: &mut [u8],
        offset: u64,
        cvmfs: bool,
    ) -> io::Result<usize> {
        let e = self.entry(rel)?;
        let q = Quick::of(fd)?;
        self.read_entry(e.index, rel, (fd, q), buf, offset, cvmfs)
    }

    /// Whether the record gives the files `a` and `b` the same content (hard links).
    pub fn same_content(&self, a: &[u8], b: &[u8]) -> bool {
        match (self.record.lookup(a), self.record.lookup(b)) {
            (Some(x), Some(y)) => x.digest().is_some() && x.digest() == y.digest(),
            _ => false,
        }
    }

    /// The record's entry of the file `rel`, for [`Verifier::read_entry`].
    pub fn entry_index(&self, rel: &[u8]) -> io::Result<u32> {
        Ok(self.entry(rel)?.index)
    }

    /// [`Verifier::read`] of the file at record entry `index` (found once per file, not per
    /// read); `rel` is its path, for messages. Whatever file `fd` is now is what is checked:
    /// a check is remembered for a file (see [`Quick`]), not for a name.
    /// `(fd, q)`: the descriptor and what file it is now ([`Quick::from_stat`] of its fstat).
    pub fn read_entry(
        &self,
        index: u32,
        rel: &[u8],
        (fd, q): (&OwnedFd, Quick),
        buf: &mut [u8],
        offset: u64,
        cvmfs: bool,
    ) -> io::Result<usize> {
        let Some(e) = self
            .record
            .entry(index)
            .filter(|e| e.kind() == libc::S_IFREG)
        else {
            return Err(self.refuse(Mismatch::Added { path: shown(rel) }));
        };

        if !e.by_blocks() {
            if self.whole.get(&e.index).is_some_and(|d| *d == q) {
                return read_at(fd, buf, offset);
            }
            let mut scratch = Vec::new();
            let c = self.check_block(rel, &e, fd, 0, cvmfs, Some(&mut scratch), q)?;
            if !c.hashed {
                return read_at(fd, buf, offset);
            }
            // The bytes hashed are the bytes served.
            let from = (offset as usize).min(scratch.len());
            let n = buf.len().min(scratch.len() - from);
            buf[..n].copy_from_slice(&scratch[from..from + n]);
            return Ok(n);
        }
        let state = self.state_for(&e, fd, q, cvmfs)?;
        let end = (offset + buf.len() as u64).min(e.size());
        let mut done = 0usize;
        let mut pos = offset;
        let mut scratch = Vec::new();
        while pos < end {
            let b = pos / record::BLOCK;
            let bstart = b * record::BLOCK;
            let bend = (bstart + record::BLOCK).min(e.size());
            let (word, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            let take = (bend.min(end) - pos) as usize;
            if state.done[word].load(Ordering::Acquire) & bit != 0 {
                let n = read_at(fd, &mut buf[done..done + take], pos)?;
                done += n;
                if n < take {
                    break;
                }
            } else {
                scratch.resize((bend - bstart) as usize, 0);
                let key = state.id.key(b, &e.block(b).expect("block in range"));
                // Checked before as this file (the one it was when opened): no need to hash.
                let c = match self.cache.as_ref().is_some_and(|c| c.contains(&key)) {
                    true => Checked {
                        hashed: false,
                        remember: true,
                    },
                    false => self.check_block(rel, &e, fd, b, cvmfs, Some(&mut scratch), q)?,
                };
                if c.remember {
                    state.done[word].fetch_or(bit, Ordering::Release);
                }
                if c.hashed {
                    let from = (pos - bstart) as usize;
                    buf[done..done + take].copy_from_slice(&scratch[from..from + take]);
                } else {
                    let n = read_at(fd, &mut buf[done..done + take], pos)?;
                    if n < take {
                        done += n;
                        break;
                    }
                }
                done += take;
            }
            pos += take as u64;
        }
        Ok(done)
    }

    /// Check block `b` of entry `e` (block 0 of a whole file: all of it) against the record,
    /// reading it into `scratch` when given (else into a buffer of our own). On the node's
    /// cache, a block checked before for the same file and digest is taken as checked.
    /// `q`: the file `fd` is, remembered with a whole file's check.
    #[allow(clippy::too_many_arguments)]
    fn check_block(
        &self,
        rel: &[u8],
        e: &Entry<'_>,
        fd: &OwnedFd,
        b: u64,
        cvmfs: bool,
        scratch: Option<&mut Vec<u8>>,
        q: Quick,
    ) -> io::Result<Checked> {
        let Some(want) = e.block(b) else {
            return Err(self.differs(rel, "size", e.size().to_string(), "more blocks".into()));
        };
        let (id, racy) = Identity::of(fd, cvmfs)?;
        let key = id.key(b, &want);
        let whole = !e.by_blocks();
        if let Some(c) = &self.cache {
            if c.contains(&key) {
                if whole {
                    self.whole.insert(e.index, q);
                }
                return Ok(Checked {
                    hashed: false,
                    remember: true,
                });
            }
        }
        let start = b * record::BLOCK;
        let len = (e.size() - start).min(record::BLOCK) as usize;
        let mut own = Vec::new();
        let buf = match scratch {
            Some(s) => s,
            None => &mut own,
        };
        buf.resize(len, 0);
        let n = read_at(fd, buf, start)?;
        // A file that grew reads past what was recorded: the size check of stat catches it,
        // but the content read here must be exactly the block.
        let mut extra = [0u8; 1];
        let longer = whole && read_at(fd, &mut extra, start + len as u64)? != 0;
        let found: Hash = Sha256::digest(&buf[..n]).into();
        self.count(0, n as u64);
        if n != len || longer || found != want {
            return Err(self.differs(rel, "content", record::hex(&want), record::hex(&found)));
        }
        let (after, _) = Identity::of(fd, cvmfs)?;
        if after != id {
            return Err(self.refuse(Mismatch::Changing { path: shown(rel) }));
        }
        if !racy {
            if let Some(c) = &self.cache {
                c.insert(&key);
            }
            if whole {
                self.whole.insert(e.index, q);
            }
        }
        Ok(Checked {
            hashed: true,
            remember: !racy,
        })
    }
}

fn xattr_shown(name: &[u8], v: Option<&[u8]>) -> String {
    let n = String::from_utf8_lossy(name);
    match v {
        None => format!("no {n}"),
        Some(v) => format!("{n}={}", String::from_utf8_lossy(v)),
    }
}

/// Check a whole layer against the record its verifier holds, as a mount would see all of it:
/// every entry's stat, every listing, link target and xattr, every byte of every file. The
/// first difference is the error (and its log line). For `convert --repair`.
pub fn check_whole_layer(layer: &super::Layer) -> io::Result<()> {
    fn walk(l: &super::Layer, rel: &[u8], buf: &mut [u8]) -> io::Result<()> {
        let names = l.list_xattrs(rel)?;
        for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            l.get_xattr(rel, n)?;
        }
        for e in l.read_dir(rel)? {
            let p = super::join(rel, &e.name);
            let Some(st) = l.stat(&p)? else {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            };
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => walk(l, &p, buf)?,
                libc::S_IFLNK => {
                    l.readlink(&p)?;
                }
                libc::S_IFREG => {
                    let fd = l.open_read(&p)?;
                    let mut off = 0u64;
                    loop {
                        let n = l.read(&p, &fd, buf, off)?;
                        if n == 0 {
                            break;
                        }
                        off += n as u64;
                    }
                }
                _ => {}
            }
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                let names = l.list_xattrs(&p)?;
                for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
                    l.get_xattr(&p, n)?;
                }
            }
        }
        Ok(())
    }
    layer.stat(b"")?;
    let mut buf = vec![0u8; record::BLOCK as usize];
    walk(layer, b"", &mut buf)
}
