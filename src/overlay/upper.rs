//! The writable upper layer: its on-disk primitives (the work directory, whiteouts, opaque
//! markers and atomic replacement), the directories it keeps open and the files it parks. Everything is built under W first and renamed into U, so
//! a daemon killed at any point leaves U holding either the old or the new entry, never a
//! partial one; the next mount empties W.
//!
//! Whiteouts are written in the kernel's form (a 0:0 character device, which any user may
//! create since Linux 5.8) and fall back to `.wh.<name>` files where mknod is refused. Opaque
//! directories get `trusted.overlay.opaque=y` where we may set trusted xattrs; elsewhere
//! (rootless) `user.overlay.opaque=y` plus a `.wh..wh..opq` file, which fuse-overlayfs, the
//! kernel with `userxattr` and OCI tar diffs all understand.

use std::ffi::CString;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

use dashmap::DashSet;
use lru::LruCache;
use parking_lot::Mutex;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use tracing::{debug, warn};

use super::Error;
use crate::confined::{list, proc_path, remove_tree};
use crate::stack::Layer;
use crate::stack::whiteout;

/// How whiteouts are written into the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutForm {
    /// A 0:0 character device under the name itself (kernel overlayfs).
    CharDevice,
    /// A `.wh.<name>` file beside it (OCI/AUFS).
    WhFile,
}

/// Directories kept open (an untar or rm -rf works in a few at a time).
const DIRS_OPEN: usize = 64;

/// Prefix of parked files in W.
const PARKED: &str = "stratafs-open-";

#[derive(Debug)]
pub struct Upper {
    /// `W/work`: scratch space on the upper filesystem.
    work: OwnedFd,
    whiteouts: WhiteoutForm,
    /// Set trusted.* xattrs (opaque marks)? Needs CAP_SYS_ADMIN in the initial namespace.
    trusted_xattrs: bool,
    /// Make copied-up data safe before it becomes visible, and pass fsync(2) on (off with
    /// `fsync=0` or `volatile`).
    fsync: bool,
    /// The upper filesystem journals its metadata in order (ext4, xfs, btrfs): writing a new
    /// file's data out before it is linked in is enough, no journal commit per copy-up.
    ordered: bool,
    /// The daemon's effective uid and gid and its umask, read at open (see [`Upper::create_whole`]).
    me: (u32, u32, u32),
    seq: AtomicU64,
    /// Deletes removed directory trees moved into W, off the request path.
    reaper: Mutex<Option<Reaper>>,
    /// Open directories by node, for the entries made and removed in them: a descriptor
    /// follows its directory through renames; dropped when the kernel forgets the node, never
    /// used for a removed one.
    dirs: Mutex<LruCache<u64, Arc<OwnedFd>>>,
    /// Nodes whose file was removed while open: kept in W until the last release, so a
    /// server that takes over can open it again.
    parked: DashSet<u64>,
}

/// A thread deleting the trees in W it is sent the names of; joined at unmount.
#[derive(Debug)]
struct Reaper {
    names: mpsc::Sender<CString>,
    thread: thread::JoinHandle<()>,
}

pub use crate::confined::cstr as cname;

/// The whiteout in W that new whiteouts are hard links of (kept from mount to unmount).
const SHARED: &str = "whiteout";

fn ignore_absent(r: rustix::io::Result<()>) -> io::Result<()> {
    match r {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Upper {
    /// Prepare `W/work` for the upper layer `upper`: same filesystem, emptied of anything a
    /// killed daemon left, and probe which whiteout and opaque forms we may write.
    /// `resume`: a server taking over from a dead one keeps the files it parked.
    pub fn open(upper: &Layer, workdir: &Path, fsync: bool, resume: bool) -> Result<Upper, Error> {
        let bad = |reason: String| Error::Workdir {
            path: workdir.into(),
            reason,
        };
        let w = rustix::fs::open(
            workdir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| bad(io::Error::from(e).to_string()))?;
        let st = rustix::fs::fstat(&w).map_err(|e| bad(io::Error::from(e).to_string()))?;
        let ordered = ordered_journal(&w);
        if st.st_dev != upper.dev {
            return Err(bad(
                "must be on the same filesystem as upperdir (copy-up renames across them)".into(),
            ));
        }
        match rustix::fs::mkdirat(&w, "work", Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(bad(format!("cannot create work/: {}", io::Error::from(e)))),
        }
        let work = rustix::fs::openat(
            &w,
            "work",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| bad(format!("work/: {}", io::Error::from(e))))?;
        let mut up = Upper {
            work,
            whiteouts: WhiteoutForm::CharDevice,
            trusted_xattrs: false,
            fsync,
            ordered,
            me: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
                own_umask(),
            ),
            seq: AtomicU64::new(0),
            reaper: Mutex::new(None),
            dirs: Mutex::new(LruCache::new(
                NonZeroUsize::new(DIRS_OPEN).expect("nonzero"),
            )),
            parked: DashSet::new(),
        };
        up.clean(resume)
            .map_err(|e| bad(format!("cleaning work/: {e}")))?;
        up.probe();
        debug!(whiteouts = ?up.whiteouts, trusted = up.trusted_xattrs, ordered, "upper layer ready");
        Ok(up)
    }

    pub fn work(&self) -> &OwnedFd {
        &self.work
    }

    /// Remove what an interrupted copy-up, rename or removal left in W (but the files a dead
    /// server parked, when taking over from it).
    fn clean(&self, resume: bool) -> io::Result<()> {
        let mut names = list(&self.work)?;
        if resume {
            names.retain(|n| !n.starts_with(PARKED.as_bytes()));
        }
        if names.iter().any(|n| n.as_slice() != SHARED.as_bytes()) {
            warn!(
                entries = names.len(),
                "removing leftovers of an interrupted run from workdir"
            );
        }
        for n in names {
            remove_tree(&self.work, &n)?;
        }
        Ok(())
    }

    fn probe(&mut self) {
        let (mut whiteouts, mut trusted) = (WhiteoutForm::CharDevice, false);
        {
            let t = self.temp();
            match rustix::fs::mknodat(&self.work, &*t, FileType::CharacterDevice, Mode::empty(), 0)
            {
                Ok(()) => {}
                Err(e) => {
                    debug!(error = %e, "mknod of a whiteout refused: writing .wh. files");
                    whiteouts = WhiteoutForm::WhFile;
                }
            }
        }
        {
            let t = self.temp();
            if rustix::fs::mkdirat(&self.work, &*t, Mode::from_raw_mode(0o700)).is_ok() {
                if let Ok(p) = proc_path(&self.work, t.as_bytes()) {
                    trusted = rustix::fs::lsetxattr(
                        &p,
                        whiteout::TRUSTED_OPAQUE,
                        b"y",
                        rustix::fs::XattrFlags::empty(),
                    )
                    .is_ok();
                }
            }
        }
        self.whiteouts = whiteouts;
        self.trusted_xattrs = trusted;
    }

    /// Put the data of `f`, a new file not yet linked into U, on disk before it gets its name,
    /// so that a crash never shows it under that name without its content (kernel overlayfs
    /// fsyncs each copy-up for the same reason). On a filesystem that journals metadata in
    /// order, waiting for the data writes is enough: the blocks were allocated in a journal
    /// transaction no later than the one that will carry the link, and the commit of that one
    /// flushes the disk's cache first. So after a crash the file is absent or whole either
    /// way, and we skip the journal commit (most of a small copy-up's time) that an fsync
    /// forces; an fsync(2) of the file later still commits the link with it.
    pub fn settle(&self, f: &OwnedFd) -> io::Result<()> {
        if !self.fsync {
            return Ok(());
        }
        if self.ordered {
            let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            // SAFETY: a plain system call on a descriptor we own.
            if unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, flags) } == 0 {
                return Ok(());
            }
            return Err(io::Error::last_os_error());
        }
        Ok(rustix::fs::fsync(f)?)
    }

    /// Create the regular file `name` in `dir` in one step, whole: where the new file's owner
    /// (`uid`, `gid`; `None`: the daemon's) is the daemon's own and the permission bits
    /// `perm` survive its umask, O_CREAT|O_EXCL gives it its final owner and mode at once,
    /// so a crash cannot leave it half made and the unnamed-inode detour (O_TMPFILE, chown,
    /// chmod, link: 34 against 21 us per file on ext4 here) is not needed. A root daemon
    /// creating root's files, as in most image builds, takes this path. `None`: it does not
    /// apply (or `dir` has a default ACL, which the filesystem would apply on its own).
    pub fn create_whole(
        &self,
        dir: &OwnedFd,
        name: &[u8],
        perm: u32,
        (uid, gid): (Option<u32>, Option<u32>),
        dir_has_default_acl: bool,
    ) -> io::Result<Option<(OwnedFd, rustix::fs::Stat)>> {
        let (euid, egid, umask) = self.me;
        if dir_has_default_acl
            || uid.is_some_and(|u| u != euid)
            || gid.is_some_and(|g| g != egid)
            || perm & umask != 0
        {
            return Ok(None);
        }
        let fd = rustix::fs::openat(
            dir,
            cname(name)?.as_c_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(perm),
        )?;
        let mut st = rustix::fs::fstat(&fd)?;
        // The kernel may still have dropped set-group-ID or picked a set-gid directory's
        // group: put the requested ones back (as the detour would have).
        let wrong_gid = gid.filter(|&g| g != st.st_gid);
        if wrong_gid.is_some() || st.st_mode & 0o7777 != perm {
            if let Some(g) = wrong_gid {
                rustix::fs::fchown(&fd, None, Some(rustix::fs::Gid::from_raw(g)))?;
            }
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(perm))?;
            st = rustix::fs::fstat(&fd)?;
        }
        Ok(Some((fd, st)))
    }

    /// A fresh name in W, removed again when dropped unless it was installed.
    pub fn temp(&self) -> Temp<'_> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        Temp {
            work: &self.work,
            name: CString::new(format!("#{:x}.{n:x}", std::process::id())).expect("no NUL"),
        }
    }

    /// Make the directory `dir` (a descriptor) hide the layers below it.
    pub fn make_opaque(&self, dir: &OwnedFd) -> io::Result<()> {
        let flags = rustix::fs::XattrFlags::empty();
        if self.trusted_xattrs {
            return Ok(rustix::fs::fsetxattr(
                dir,
                whiteout::TRUSTED_OPAQUE,
                b"y",
                flags,
            )?);
        }
        match rustix::fs::fsetxattr(dir, whiteout::USER_OPAQUE, b"y", flags) {
            Ok(()) | Err(Errno::NOTSUP | Errno::PERM) => {}
            Err(e) => return Err(e.into()),
        }
        let m = rustix::fs::openat(
            dir,
            cname(whiteout::OPAQUE_MARKER)?.as_c_str(),
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )?;
        drop(m);
        Ok(())
    }

    /// Put a whiteout at `dir/name`, replacing whatever the upper layer holds there in one
    /// step. A directory replaced this way is removed from W afterwards.
    pub fn whiteout(&self, dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
        let cn = cname(name)?;
        match self.whiteouts {
            WhiteoutForm::CharDevice => {
                let t = self.temp();
                if !self.link_shared(&self.work, &t) {
                    rustix::fs::mknodat(
                        &self.work,
                        &*t,
                        FileType::CharacterDevice,
                        Mode::empty(),
                        0,
                    )?;
                }
                let exists = rustix::fs::statat(dir, &cn, AtFlags::SYMLINK_NOFOLLOW);
                match exists {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                        rustix::fs::renameat_with(
                            &self.work,
                            &*t,
                            dir,
                            &cn,
                            RenameFlags::EXCHANGE,
                        )?;
                        self.discard(t);
                        Ok(())
                    }
                    _ => Ok(rustix::fs::renameat(&self.work, &*t, dir, &cn)?),
                }
            }
            WhiteoutForm::WhFile => {
                // A name too long for a `.wh.` file cannot be whited out in this form.
                let wh = whiteout::whiteout_name(name)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
                let wh = cname(&wh)?;
                let t = self.temp();
                drop(rustix::fs::openat(
                    &self.work,
                    &*t,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?);
                // The .wh. file first: until the entry goes, it shows itself (same layer).
                rustix::fs::renameat(&self.work, &*t, dir, &wh)?;
                self.remove(dir, name)
            }
        }
    }

    /// Put a whiteout at `dir/name` where the upper layer holds nothing (a lower entry is
    /// removed): a hard link of one shared 0:0 device in W, as kernel overlayfs shares one, so
    /// the upper filesystem allocates no inode and the link appears in one step. Anything
    /// unexpected (the name is taken, the filesystem refuses links) takes the general path.
    pub fn whiteout_fresh(&self, dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
        if self.whiteouts == WhiteoutForm::CharDevice && self.link_shared(dir, &cname(name)?) {
            return Ok(());
        }
        self.whiteout(dir, name)
    }

    /// Link W's shared whiteout as `dir/name`; false where that cannot be done.
    fn link_shared(&self, dir: &OwnedFd, name: &std::ffi::CStr) -> bool {
        for _ in 0..2 {
            match rustix::fs::linkat(&self.work, SHARED, dir, name, AtFlags::empty()) {
                Ok(()) => return true,
                // None yet, or it reached the filesystem's link limit: a new one.
                Err(Errno::NOENT | Errno::MLINK) => {
                    if self.new_shared_whiteout().is_err() {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// The mount ends: W is left empty (a killed daemon's shared whiteout goes at the next
    /// mount).
    pub fn unmounted(&self) {
        // Trees still being deleted first, so that W is left empty.
        let reaper = self.reaper.lock().take();
        if let Some(r) = reaper {
            drop(r.names);
            let _ = r.thread.join();
        }
        let _ = rustix::fs::unlinkat(&self.work, SHARED, AtFlags::empty());
        for n in list(&self.work).unwrap_or_default() {
            if n.starts_with(PARKED.as_bytes()) {
                let _ = rustix::fs::unlinkat(&self.work, n.as_slice(), AtFlags::empty());
            }
        }
    }

    /// Where an unlinked file that is still open waits for its last release (see
    /// [`crate::overlay::Overlay::remove`]).
    pub fn parked_name(ino: u64) -> String {
        format!("{PARKED}{ino:x}")
    }

    /// Move `name` in `dir` to W as the parked file of node `ino`.
    pub fn park(&self, dir: &OwnedFd, name: &[u8], ino: u64) -> io::Result<()> {
        let cn =
            std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        rustix::fs::renameat(dir, &*cn, &self.work, Upper::parked_name(ino))?;
        self.parked.insert(ino);
        Ok(())
    }

    /// The file a dead server parked for node `ino`, opened read-write, and its stat; it is
    /// this server's to unpark from now on.
    pub fn adopt_parked(&self, ino: u64) -> io::Result<(OwnedFd, rustix::fs::Stat)> {
        let fd = rustix::fs::openat(
            &self.work,
            Upper::parked_name(ino),
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        self.parked.insert(ino);
        Ok((fd, st))
    }

    /// Whether node `ino`'s file is parked.
    pub fn is_parked(&self, ino: u64) -> bool {
        self.parked.contains(&ino)
    }

    /// The last handle of node `ino` went: its parked file, if it has one, goes.
    pub fn unpark(&self, ino: u64) {
        if self.parked.remove(&ino).is_some() {
            let _ = rustix::fs::unlinkat(&self.work, Upper::parked_name(ino), AtFlags::empty());
        }
    }

    /// The form new whiteouts take here.
    pub fn whiteout_form(&self) -> WhiteoutForm {
        self.whiteouts
    }

    /// Whether copied-up data is made safe before it shows, and fsync(2) passed on.
    pub fn syncs(&self) -> bool {
        self.fsync
    }

    /// The open directory of node `ino`, if it is kept.
    pub fn dir(&self, ino: u64) -> Option<Arc<OwnedFd>> {
        self.dirs.lock().get(&ino).cloned()
    }

    /// As [`Upper::dir`], without making it the most recently used.
    pub fn peek_dir(&self, ino: u64) -> Option<Arc<OwnedFd>> {
        self.dirs.lock().peek(&ino).cloned()
    }

    /// Keep `fd` open as node `ino`'s directory.
    pub fn keep_dir(&self, ino: u64, fd: &Arc<OwnedFd>) {
        self.dirs.lock().put(ino, Arc::clone(fd));
    }

    /// The kernel forgot node `ino`.
    pub fn drop_dir(&self, ino: u64) {
        self.dirs.lock().pop(&ino);
    }

    /// Make (or replace) W's shared whiteout.
    fn new_shared_whiteout(&self) -> io::Result<()> {
        let t = self.temp();
        rustix::fs::mknodat(&self.work, &*t, FileType::CharacterDevice, Mode::empty(), 0)?;
        rustix::fs::renameat(&self.work, &*t, &self.work, SHARED)?;
        Ok(())
    }

    /// Whether the upper layer holds a whiteout for `name` in `dir`.
    pub fn has_whiteout(&self, dir: &OwnedFd, name: &[u8]) -> io::Result<bool> {
        match rustix::fs::statat(dir, cname(name)?.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if whiteout::is_char_whiteout(st.st_mode, st.st_rdev) => return Ok(true),
            Ok(_) => return Ok(false),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(wh) = whiteout::whiteout_name(name) else {
            return Ok(false);
        };
        match rustix::fs::statat(dir, cname(&wh)?.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Drop a `.wh.<name>` file, once `name` itself exists in the same layer.
    pub fn drop_wh_file(&self, dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
        let Some(wh) = whiteout::whiteout_name(name) else {
            return Ok(());
        };
        ignore_absent(rustix::fs::unlinkat(
            dir,
            cname(&wh)?.as_c_str(),
            AtFlags::empty(),
        ))
    }

    /// Remove `dir/name` from the upper layer, whatever it is: moved into W in one step, then
    /// deleted there (a directory may still hold whiteouts).
    pub fn remove(&self, dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
        let cn = cname(name)?;
        match rustix::fs::unlinkat(dir, &cn, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            Err(Errno::ISDIR | Errno::PERM) => {}
            Err(e) => return Err(e.into()),
        }
        let t = self.temp();
        rustix::fs::renameat(dir, &cn, &self.work, &*t)?;
        self.discard(t);
        Ok(())
    }

    /// Delete `t`, a tree already moved out of U into W, in the background: a removed
    /// directory of a lower one holds a whiteout per removed entry, and deleting them one by
    /// one (about 1 ms for 100) need not delay the rmdir's reply. What a killed daemon leaves
    /// there, the next mount deletes.
    fn discard(&self, t: Temp<'_>) {
        let name = t.keep();
        let mut slot = self.reaper.lock();
        if slot.is_none() {
            match self.start_reaper() {
                Ok(r) => *slot = Some(r),
                Err(e) => debug!(error = %e, "no reaper thread: deleting in place"),
            }
        }
        let name = match slot.as_ref() {
            Some(r) => match r.names.send(name) {
                Ok(()) => return,
                Err(mpsc::SendError(name)) => name,
            },
            None => name,
        };
        drop(slot);
        if let Err(e) = remove_tree(&self.work, name.as_bytes()) {
            warn!(error = %e, "deleting a removed tree in workdir");
        }
    }

    fn start_reaper(&self) -> io::Result<Reaper> {
        let work = self.work.try_clone()?;
        let (names, rx) = mpsc::channel::<CString>();
        let thread = thread::Builder::new()
            .name("stratafs-reaper".into())
            .spawn(move || {
                for name in rx {
                    if let Err(e) = remove_tree(&work, name.as_bytes()) {
                        warn!(error = %e, "deleting a removed tree in workdir");
                    }
                }
            })?;
        Ok(Reaper { names, thread })
    }

    /// Move the new entry `W/tmp` to `dir/name`, where the upper layer may hold a whiteout
    /// (char form: replaced in the same step) or nothing.
    pub fn install(
        &self,
        tmp: &CString,
        dir: &OwnedFd,
        name: &[u8],
        is_dir: bool,
    ) -> io::Result<()> {
        let tmp: &CString = tmp;
        let cn = cname(name)?;
        match rustix::fs::renameat_with(&self.work, tmp, dir, &cn, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                // Only a whiteout may be in the way.
                let st = rustix::fs::statat(dir, &cn, AtFlags::SYMLINK_NOFOLLOW)?;
                if !whiteout::is_char_whiteout(st.st_mode, st.st_rdev) {
                    return Err(Errno::EXIST.into());
                }
                if is_dir {
                    rustix::fs::renameat_with(&self.work, tmp, dir, &cn, RenameFlags::EXCHANGE)?;
                    ignore_absent(rustix::fs::unlinkat(&self.work, tmp, AtFlags::empty()))?;
                } else {
                    rustix::fs::renameat(&self.work, tmp, dir, &cn)?;
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.drop_wh_file(dir, name)
    }
}

/// An unnamed regular file (O_TMPFILE, mode 0600) in `dir`, to be made whole and then named
/// with [`link_unnamed`]: a crash before that leaves nothing. `None` where the filesystem has
/// no O_TMPFILE.
pub fn unnamed_file(dir: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    match rustix::fs::openat(
        dir,
        c".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Name the unnamed file `fd` as `dir/name` in one step; `false` where /proc is missing.
pub fn link_unnamed(fd: &OwnedFd, dir: &OwnedFd, name: &[u8]) -> io::Result<bool> {
    // linkat(AT_EMPTY_PATH) wants CAP_DAC_READ_SEARCH; the /proc form works for anyone.
    let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
    match rustix::fs::linkat(
        rustix::fs::CWD,
        proc.as_str(),
        dir,
        cname(name)?.as_c_str(),
        AtFlags::SYMLINK_FOLLOW,
    ) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A temporary entry in W. Whatever it holds goes when it is dropped, so a failed copy-up or
/// create leaves nothing behind (a killed daemon's leftovers go at the next mount).
pub struct Temp<'a> {
    work: &'a OwnedFd,
    name: CString,
}

impl std::ops::Deref for Temp<'_> {
    type Target = CString;
    fn deref(&self) -> &CString {
        &self.name
    }
}

impl AsRef<std::ffi::CStr> for Temp<'_> {
    fn as_ref(&self) -> &std::ffi::CStr {
        &self.name
    }
}

impl Temp<'_> {
    /// The name, without deleting what it names when dropped.
    fn keep(self) -> CString {
        let mut me = std::mem::ManuallyDrop::new(self);
        std::mem::take(&mut me.name)
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        // Usually already renamed away: then there is nothing here.
        let _ = remove_tree(self.work, self.name.as_bytes());
    }
}

/// Whether `dir`'s filesystem journals metadata in order and flushes the disk cache before a
/// commit, so that a new file's data written out before its link cannot be lost with the link
/// kept (see [`Upper::settle`]): xfs, btrfs, and ext4 with a journal (ext4 without one, as
/// `mkfs.ext4 -O ^has_journal` makes, orders nothing; its /proc options show no `data=`).
fn ordered_journal(dir: &OwnedFd) -> bool {
    let Ok(fs) = rustix::fs::fstatfs(dir) else {
        return false;
    };
    match fs.f_type {
        libc::XFS_SUPER_MAGIC | libc::BTRFS_SUPER_MAGIC => return true,
        libc::EXT4_SUPER_MAGIC => {}
        _ => return false,
    }
    let Ok(st) = rustix::fs::fstat(dir) else {
        return false;
    };
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let Ok(dev) = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")) else {
        return false;
    };
    let Some(name) = dev.file_name() else {
        return false;
    };
    let options = Path::new("/proc/fs/ext4").join(name).join("options");
    std::fs::read_to_string(options).is_ok_and(|o| o.lines().any(|l| l.starts_with("data=")))
}

/// This process's umask, from /proc (umask(2) can only be read by changing it, which would
/// race with other threads creating files); 0o777 where it cannot be read, so that
/// [`Upper::create_whole`] never applies.
fn own_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
        })
        .unwrap_or(0o777)
}
