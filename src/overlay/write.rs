//! Writes through the merged view: create, remove, rename, link, attribute and xattr changes.
//! Each one copies up what it touches, then changes the writable layer in steps that are
//! each atomic (see [`crate::overlay::upper`]), then brings the node table and listings up to date.
//! All hold the namespace lock exclusively. Changes to what a file is rather than where it
//! is (attributes, xattrs, opening for writing, data) are in [`super::attrs`].

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, RenameFlags, Uid};
use rustix::io::Errno;

use super::acl;
pub use super::attrs::{SetAttr, SetTime};
use crate::overlay::copyup::Data;
use crate::overlay::inode::{Attr, LayerList, Node, NodeState};
use crate::overlay::upper::{self, Upper, WhiteoutForm, cname};
use crate::overlay::{Overlay, errno};
use crate::stack::layer::join;
use crate::stack::override_stat::Override;
use crate::stack::whiteout::{self, Marker};

/// What to create.
#[derive(Debug, Clone)]
pub enum NewEntry<'a> {
    File,
    Dir,
    Symlink(&'a [u8]),
    /// Fifo, socket or device: mode's type bits and rdev.
    Node(u64),
}

/// Who asks (already the presented ids; mapped to disk here).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The umask of a create, which the kernel leaves to us when it handles ACLs.
    pub umask: u32,
}

fn check_name(name: &[u8]) -> io::Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(errno(libc::EINVAL));
    }
    if name.len() > 255 {
        return Err(errno(libc::ENAMETOOLONG));
    }
    // Names that mean something to the overlay cannot be made through it.
    if whiteout::classify(name) != Marker::Entry {
        return Err(errno(libc::EPERM));
    }
    Ok(())
}

/// A resolved name: its layers, the top entry's stat and its live node if there is one.
struct Found {
    layers: LayerList,
    st: rustix::fs::Stat,
    node: Option<Arc<Node>>,
}

impl Found {
    fn is_dir(&self) -> bool {
        self.st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
    fn has_lower(&self) -> bool {
        self.layers.iter().any(|&l| l != 0)
    }
}

impl Overlay {
    pub(super) fn upper(&self) -> io::Result<&Upper> {
        match &self.upper {
            Some(u) if self.writable() => Ok(u),
            _ => Err(errno(libc::EROFS)),
        }
    }

    /// Resolve without taking a kernel reference.
    fn peek(&self, dir: &Arc<Node>, name: &[u8]) -> io::Result<Option<Found>> {
        let Some((layers, st)) = self.resolve(dir, name, false)? else {
            return Ok(None);
        };
        let real = self.compose_ino(&self.layers[layers[0] as usize], st.st_ino);
        let ino = self.names.number_of(real);
        let node = self
            .names
            .node(ino)
            .filter(|n| n.state.read().real == real && !n.is_detached());
        Ok(Some(Found { layers, st, node }))
    }

    /// The live node of a name, or a transient one (not in the table) to copy it up with.
    fn node_of(&self, dir: &Arc<Node>, name: &[u8], f: &Found) -> Arc<Node> {
        f.node.clone().unwrap_or_else(|| {
            let real = self.compose_ino(&self.layers[f.layers[0] as usize], f.st.st_ino);
            Arc::new(Node::new(
                self.names.number_of(real),
                Some((Arc::clone(dir), name.into())),
                NodeState {
                    layers: f.layers.clone(),
                    attr: Attr::from_stat(real, &f.st),
                    real,
                },
            ))
        })
    }

    /// The directory `dir` in the writable layer (copied up if needed), opened.
    fn upper_dir(&self, dir: &Arc<Node>) -> io::Result<Arc<OwnedFd>> {
        let kept = self.upper.as_ref().filter(|_| !dir.is_detached());
        if let Some(fd) = kept.and_then(|u| u.dir(dir.ino)) {
            return Ok(fd);
        }
        self.copy_up(dir, Data::Copy)?;
        let fd = Arc::new(self.layers[0].open_dir(&dir.path())?);
        if let Some(u) = kept {
            u.keep_dir(dir.ino, &fd);
        }
        Ok(fd)
    }

    /// Whether removing the upper entry `name` of `dir` would uncover a lower one.
    fn lower_visible(&self, dir: &Arc<Node>, name: &[u8]) -> io::Result<bool> {
        Ok(self.resolve(dir, name, true)?.is_some())
    }

    /// Whether a lower layer of `dir` holds a whiteout for `name`.
    fn whiteout_below(&self, dir: &Node, name: &[u8]) -> io::Result<bool> {
        let rel = join(&dir.path(), name);
        let wh = whiteout::whiteout_name(name).map(|w| join(&dir.path(), &w));
        for l in dir.layers().into_iter().filter(|&l| l != 0) {
            let layer = &self.layers[l as usize];
            if let Some(st) = layer.stat(&rel)? {
                return Ok(whiteout::is_char_whiteout(st.st_mode, st.st_rdev));
            }
            if let Some(wh) = &wh {
                if layer.exists(wh)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Bring `dir`'s listing and the node table up to date after `name` appeared in the
    /// writable layer, and return its node with one kernel reference.
    fn entered(&self, dir: &Arc<Node>, name: &[u8]) -> io::Result<Arc<Node>> {
        let st = self.layers[0]
            .stat(&join(&dir.path(), name))?
            .ok_or_else(|| errno(libc::ENOENT))?;
        self.listed(dir, name, &st);
        self.lookup_locked(dir, name)?
            .ok_or_else(|| errno(libc::ENOENT))
    }

    /// A new file `fd` was linked in as `name`, where no layer held that name: its node, from
    /// the descriptor's stat without a lookup by path.
    fn entered_new_file(
        &self,
        dir: &Arc<Node>,
        name: &[u8],
        st: &rustix::fs::Stat,
    ) -> io::Result<Arc<Node>> {
        self.listed(dir, name, st);
        Ok(self.node_for(dir, name, smallvec::smallvec![0], st))
    }

    /// Add `name`, the writable layer's entry `st`, to the listing of `dir`, if it has one.
    fn listed(&self, dir: &Node, name: &[u8], st: &rustix::fs::Stat) {
        let real = self.compose_ino(&self.layers[0], st.st_ino);
        let ino = self.names.number_of(real);
        if let Some(l) = dir.listing.write().as_mut() {
            l.add(name, st.st_mode & libc::S_IFMT, ino, 0);
        }
    }

    /// `name` left `dir`: drop it from the listing and detach its node.
    fn removed(&self, dir: &Arc<Node>, name: &[u8], node: Option<&Arc<Node>>) {
        if let Some(l) = dir.listing.write().as_mut() {
            l.remove(name);
        }
        if let Some(n) = node {
            n.remove_name(dir.ino, name);
            if n.is_detached() {
                let real = n.state.read().real;
                self.names.release_number(real, n.ino);
            }
        }
    }

    /// Owner on disk for a new entry of `caller` in `dir` (set-gid directories pass their
    /// group on, as the kernel does).
    fn new_owner(
        &self,
        caller: Caller,
        dir: &Node,
    ) -> io::Result<(Option<u32>, Option<u32>, bool)> {
        let pattr = dir.attr();
        let sgid = pattr.mode & libc::S_ISGID != 0;
        let gid = if sgid { pattr.gid } else { caller.gid };
        let uid = if self.ids.squash_uid.is_some() {
            None
        } else {
            Some(
                self.ids
                    .uid_to_disk(caller.uid)
                    .ok_or_else(|| errno(libc::EINVAL))?,
            )
        };
        let gid = if self.ids.squash_gid.is_some() {
            None
        } else {
            Some(
                self.ids
                    .gid_to_disk(gid)
                    .ok_or_else(|| errno(libc::EINVAL))?,
            )
        };
        Ok((uid, gid, sgid))
    }

    /// Create `name` in `dir`. Regular files come back open for reading and writing.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        what: NewEntry<'_>,
        mode: u32,
        caller: Caller,
    ) -> io::Result<(Arc<Node>, Option<OwnedFd>)> {
        check_name(name)?;
        // A 0:0 character device is a whiteout: it cannot be made through the overlay (as
        // kernel overlayfs refuses it), or it would hide the name it was meant to create.
        if let NewEntry::Node(rdev) = what {
            if whiteout::is_char_whiteout(mode, rdev) {
                return Err(errno(libc::EPERM));
            }
        }
        let dir = self.node(parent)?;
        let upper = self.upper()?;
        let _ns = self.names.change();
        if dir.is_detached() {
            return Err(errno(libc::ENOENT));
        }
        if self.peek(&dir, name)?.is_some() {
            return Err(errno(libc::EEXIST));
        }
        let pdir = self.upper_dir(&dir)?;
        let whited = upper.has_whiteout(&pdir, name)?;
        // As overlayfs: a new directory where any layer has a whiteout is made opaque.
        let opaque =
            matches!(what, NewEntry::Dir) && (whited || self.whiteout_below(&dir, name)?);
        let (uid, gid, sgid) = self.new_owner(caller, &dir)?;
        let is_dir = matches!(what, NewEntry::Dir);
        let override_x = self.ids.override_xattr;
        // The parent's default ACL, else the umask, decides the new entry's mode.
        let parent_acl = match override_x {
            None => acl::default_of(&pdir)?,
            Some(_) => None,
        };
        let inherited = acl::inherit(mode & 0o7777, caller.umask, parent_acl.as_deref(), is_dir);
        if matches!(what, NewEntry::File) && !whited {
            // No layer holds the name (peek) and no whiteout hides one: only the new file.
            let made = match override_x {
                None => upper.create_whole(
                    &pdir,
                    name,
                    inherited.perm,
                    (uid, gid),
                    parent_acl.is_some(),
                )?,
                Some(_) => None,
            };
            let made = match made {
                Some(m) => Some(m),
                None => self.create_file_in_place(&pdir, name, &inherited, uid, gid)?,
            };
            if let Some((fd, st)) = made {
                let node = self.entered_new_file(&dir, name, &st)?;
                return Ok((node, Some(fd)));
            }
        }
        let work = upper.work();
        let tmp = upper.temp();
        let mut perm = inherited.perm;
        if is_dir && sgid {
            perm |= libc::S_ISGID;
        }
        let file = make_in_work(upper, &tmp, &what, mode, opaque, override_x.is_some())?;
        self.set_new_metadata(
            work,
            &tmp,
            &what,
            New {
                mode,
                uid,
                gid,
                perm,
            },
            &inherited,
        )?;
        upper.install(&tmp, &pdir, name, is_dir)?;
        let node = self.entered(&dir, name)?;
        if is_dir {
            // Empty, and only in the writable layer: a listing now answers lookups of names
            // not yet in it (an untar's, before each create) without a system call.
            self.ensure_listing_locked(&node)?;
        }
        Ok((node, file))
    }

    /// Owner, override xattr, mode and inherited ACL of the entry made as `tmp` in the work
    /// directory, before it is installed under its name.
    fn set_new_metadata(
        &self,
        work: &OwnedFd,
        tmp: &std::ffi::CStr,
        what: &NewEntry<'_>,
        new: New,
        inherited: &acl::Inherited,
    ) -> io::Result<()> {
        let override_x = self.ids.override_xattr;
        let is_dir = matches!(what, NewEntry::Dir);
        self.set_owner_at(work, tmp, new.uid, new.gid, override_x.is_some())?;
        if let Some(x) = override_x {
            let kind = match what {
                NewEntry::Node(rdev) => Some((new.mode & libc::S_IFMT, *rdev)),
                _ => None,
            };
            let o = Override {
                uid: new.uid.unwrap_or(0),
                gid: new.gid.unwrap_or(0),
                perm: new.perm,
                kind,
            };
            let p = crate::confined::proc_path(work, tmp.to_bytes())?;
            rustix::fs::lsetxattr(
                &p,
                x.name(),
                o.format().as_bytes(),
                rustix::fs::XattrFlags::empty(),
            )?;
        }
        if matches!(what, NewEntry::Symlink(_)) {
            return Ok(());
        }
        // With an override xattr the presented mode lives there; the file itself stays
        // usable by the daemon.
        let disk_perm = match override_x {
            Some(_) => new.perm | if is_dir { 0o700 } else { 0o600 },
            None => new.perm,
        };
        rustix::fs::chmodat(work, tmp, Mode::from_raw_mode(disk_perm), AtFlags::empty())?;
        let p = crate::confined::proc_path(work, tmp.to_bytes())?;
        acl::apply(inherited, |name, value| {
            rustix::fs::lsetxattr(&p, name, value, rustix::fs::XattrFlags::empty())
        })?;
        Ok(())
    }

    /// A new regular file made whole before it has a name: an unnamed inode (O_TMPFILE) in
    /// the upper directory itself gets its owner, mode and override xattr, then is linked in.
    /// A crash before the link leaves nothing; no work-dir round trip, and the inode is
    /// allocated near its directory as on a plain create (creating every file in W made ext4
    /// search one block group's recently freed inodes: half the daemon's CPU in an untar).
    /// `None`: the filesystem has no O_TMPFILE (or no /proc); the caller takes the W path.
    fn create_file_in_place(
        &self,
        pdir: &OwnedFd,
        name: &[u8],
        inherited: &acl::Inherited,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> io::Result<Option<(OwnedFd, rustix::fs::Stat)>> {
        let perm = inherited.perm;
        let Some(fd) = upper::unnamed_file(pdir)? else {
            return Ok(None);
        };
        let override_x = self.ids.override_xattr;
        self.set_owner_at(&fd, c"", uid, gid, override_x.is_some())?;
        let disk_perm = match override_x {
            Some(x) => {
                let o = Override {
                    uid: uid.unwrap_or(0),
                    gid: gid.unwrap_or(0),
                    perm,
                    kind: None,
                };
                rustix::fs::fsetxattr(
                    &fd,
                    x.name(),
                    o.format().as_bytes(),
                    rustix::fs::XattrFlags::empty(),
                )?;
                perm | 0o600
            }
            None => perm,
        };
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(disk_perm))?;
        acl::apply(inherited, |name, value| {
            rustix::fs::fsetxattr(&fd, name, value, rustix::fs::XattrFlags::empty())
        })?;
        if !upper::link_unnamed(&fd, pdir, name)? {
            return Ok(None);
        }
        let st = rustix::fs::fstat(&fd)?;
        Ok(Some((fd, st)))
    }

    /// Set the owner of `dir/name` (no-follow; `name` empty: `dir` itself); with `soft`
    /// refusal is tolerated.
    fn set_owner_at(
        &self,
        dir: &OwnedFd,
        name: &std::ffi::CStr,
        uid: Option<u32>,
        gid: Option<u32>,
        soft: bool,
    ) -> io::Result<()> {
        if uid.is_none() && gid.is_none() {
            return Ok(());
        }
        let me = rustix::process::geteuid().as_raw();
        let flags = if name.is_empty() {
            AtFlags::EMPTY_PATH
        } else {
            AtFlags::SYMLINK_NOFOLLOW
        };
        match rustix::fs::chownat(
            dir,
            name,
            uid.map(Uid::from_raw),
            gid.map(Gid::from_raw),
            flags,
        ) {
            Ok(()) => Ok(()),
            // An ordinary user's mount: what it creates is its own, as on any filesystem.
            Err(Errno::PERM | Errno::INVAL) if soft || me != 0 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// unlink(2) (`dir == false`) and rmdir(2).
    pub fn remove(&self, parent: u64, name: &[u8], rmdir: bool) -> io::Result<()> {
        let dir = self.node(parent)?;
        let upper = self.upper()?;
        let _ns = self.names.change();
        let f = self.peek(&dir, name)?.ok_or_else(|| errno(libc::ENOENT))?;
        match (rmdir, f.is_dir()) {
            (true, false) => return Err(errno(libc::ENOTDIR)),
            (false, true) => return Err(errno(libc::EISDIR)),
            _ => {}
        }
        if rmdir {
            let victim = self.node_of(&dir, name, &f);
            if !self.merged_empty(&victim)? {
                return Err(errno(libc::ENOTEMPTY));
            }
        }
        let pdir = self.upper_dir(&dir)?;
        if let Some(ino) = self.parkable(&f, &pdir, name).filter(|_| !rmdir) {
            upper.park(&pdir, name, ino)?;
            if self.lower_visible(&dir, name)? {
                upper.whiteout_fresh(&pdir, name)?;
            }
        } else if f.layers[0] != 0 {
            // Only lower layers hold it.
            upper.whiteout_fresh(&pdir, name)?;
        } else if self.lower_visible(&dir, name)? {
            upper.whiteout(&pdir, name)?;
        } else {
            upper.remove(&pdir, name)?;
        }
        self.removed(&dir, name, f.node.as_ref());
        Ok(())
    }

    /// An upper file still open and linked nowhere else is parked in W rather than unlinked
    /// (by a removal, or a rename over it): its data must outlive a server that dies before
    /// the last release. Its node, if so.
    fn parkable(&self, f: &Found, pdir: &OwnedFd, name: &[u8]) -> Option<u64> {
        let n = f.node.as_ref()?;
        let open = n.open_fd.lock().0.strong_count() > 0;
        let lone_file = || {
            rustix::fs::statat(pdir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| st.st_nlink == 1 && st.st_mode & libc::S_IFMT == libc::S_IFREG)
        };
        (f.layers[0] == 0 && open && lone_file()).then_some(n.ino)
    }

    /// Whether a directory shows no entries in the merged view.
    fn merged_empty(&self, d: &Arc<Node>) -> io::Result<bool> {
        self.ensure_listing_locked(d)?;
        Ok(d.listing.read().as_ref().is_none_or(|l| l.is_empty()))
    }

    /// rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE. A directory that exists in a lower
    /// layer is not moved (EXDEV, as fuse-overlayfs and overlayfs without redirect_dir do;
    /// `mv` then copies it).
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        check_name(newname)?;
        let dir = self.node(parent)?;
        let newdir = self.node(newparent)?;
        let upper = self.upper()?;
        let _ns = self.names.change();
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let src = self.peek(&dir, name)?.ok_or_else(|| errno(libc::ENOENT))?;
        let dst = self.peek(&newdir, newname)?;
        if parent == newparent && name == newname {
            return Ok(());
        }
        self.may_rename(&src, dst.as_ref(), (&newdir, newname), flags)?;
        let snode = self.node_of(&dir, name, &src);
        self.copy_up(&snode, Data::Copy)?;
        let spdir = self.upper_dir(&dir)?;
        let dpdir = self.upper_dir(&newdir)?;
        let (cs, cd) = (cname(name)?, cname(newname)?);
        if exchange {
            let dst = dst.as_ref().expect("may_rename checked it");
            let dnode = self.node_of(&newdir, newname, dst);
            self.copy_up(&dnode, Data::Copy)?;
            rustix::fs::renameat_with(&spdir, &cs, &dpdir, &cd, RenameFlags::EXCHANGE)?;
            if let Some(l) = dir.listing.write().as_mut() {
                l.add(name, dst.st.st_mode & libc::S_IFMT, dnode.ino, 0);
            }
            if let Some(l) = newdir.listing.write().as_mut() {
                l.add(newname, src.st.st_mode & libc::S_IFMT, snode.ino, 0);
            }
            snode.rename((dir.ino, name), (&newdir, newname));
            dnode.rename((newdir.ino, newname), (&dir, name));
            return Ok(());
        }
        if let Some(ino) = dst.as_ref().and_then(|d| self.parkable(d, &dpdir, newname)) {
            upper.park(&dpdir, newname, ino)?;
        }
        let src_lower = self.lower_visible(&dir, name)?;
        let dst_lower = dst.is_some() && self.lower_visible(&newdir, newname)?;
        let in_way = match rustix::fs::statat(&dpdir, &cd, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(e.into()),
        };
        let whiteout_in_way =
            in_way.is_some_and(|s| whiteout::is_char_whiteout(s.st_mode, s.st_rdev));
        let dir_in_way = in_way.is_some_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR);
        if src.is_dir()
            && (dst_lower
                || whiteout_in_way
                || newdir.layers().len() > 1
                || upper.has_whiteout(&dpdir, newname)?)
        {
            // Lower entries of the new name must stay hidden under the moved directory (and,
            // as overlayfs does, a directory moved into a merged one is marked so anyway).
            let d = self.layers[0].open_dir(&snode.path())?;
            upper.make_opaque(&d)?;
        }
        let mut src_done = false;
        if src.is_dir() && (whiteout_in_way || dir_in_way) {
            // rename(2) cannot put a directory over a device or a non-empty directory:
            // exchange, then deal with what landed at the old name.
            rustix::fs::renameat_with(&spdir, &cs, &dpdir, &cd, RenameFlags::EXCHANGE)?;
            if src_lower {
                upper.whiteout(&spdir, name)?;
            } else {
                upper.remove(&spdir, name)?;
            }
            src_done = true;
        } else if src_lower && upper.whiteout_form() == WhiteoutForm::CharDevice {
            match rustix::fs::renameat_with(&spdir, &cs, &dpdir, &cd, RenameFlags::WHITEOUT) {
                Ok(()) => src_done = true,
                Err(Errno::INVAL | Errno::PERM | Errno::NOSYS) => {
                    rustix::fs::renameat(&spdir, &cs, &dpdir, &cd)?
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            rustix::fs::renameat(&spdir, &cs, &dpdir, &cd)?;
        }
        if src_lower && !src_done {
            upper.whiteout(&spdir, name)?;
        }
        upper.drop_wh_file(&dpdir, newname)?;
        let kind = src.st.st_mode & libc::S_IFMT;
        self.moved((&dir, name), (&newdir, newname), &snode, kind, dst.as_ref());
        Ok(())
    }

    /// The tables after `snode` (of type `kind`) moved from `from` to `to` over `dst`: what
    /// it replaced is gone, both listings know, and the node has its new name.
    fn moved(
        &self,
        (dir, name): (&Arc<Node>, &[u8]),
        (newdir, newname): (&Arc<Node>, &[u8]),
        snode: &Arc<Node>,
        kind: u32,
        dst: Option<&Found>,
    ) {
        if let Some(d) = dst {
            self.removed(newdir, newname, d.node.as_ref());
        }
        if let Some(l) = dir.listing.write().as_mut() {
            l.remove(name);
        }
        if let Some(l) = newdir.listing.write().as_mut() {
            l.add(newname, kind, snode.ino, 0);
        }
        snode.rename((dir.ino, name), (newdir, newname));
    }

    /// What rename(2) refuses before anything moves: a name taken under RENAME_NOREPLACE, a
    /// missing one under RENAME_EXCHANGE, a directory with lower entries (EXDEV), a file over
    /// a directory or the reverse, a directory over a non-empty one.
    fn may_rename(
        &self,
        src: &Found,
        dst: Option<&Found>,
        (newdir, newname): (&Arc<Node>, &[u8]),
        flags: u32,
    ) -> io::Result<()> {
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & libc::RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(errno(libc::EEXIST));
        }
        if exchange && dst.is_none() {
            return Err(errno(libc::ENOENT));
        }
        if src.is_dir() && src.has_lower() {
            return Err(errno(libc::EXDEV));
        }
        let Some(d) = dst else {
            return Ok(());
        };
        if exchange {
            return match d.is_dir() && d.has_lower() {
                true => Err(errno(libc::EXDEV)),
                false => Ok(()),
            };
        }
        match (src.is_dir(), d.is_dir()) {
            (true, false) => Err(errno(libc::ENOTDIR)),
            (false, true) => Err(errno(libc::EISDIR)),
            (true, true) if !self.merged_empty(&self.node_of(newdir, newname, d))? => {
                Err(errno(libc::ENOTEMPTY))
            }
            _ => Ok(()),
        }
    }

    /// link(2): a new name for a non-directory.
    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> io::Result<Arc<Node>> {
        check_name(newname)?;
        let node = self.node(ino)?;
        let newdir = self.node(newparent)?;
        let upper = self.upper()?;
        let _ns = self.names.change();
        if node.attr().is_dir() {
            return Err(errno(libc::EPERM));
        }
        if node.is_detached() {
            return Err(errno(libc::ENOENT));
        }
        if self.peek(&newdir, newname)?.is_some() {
            return Err(errno(libc::EEXIST));
        }
        self.copy_up(&node, Data::Copy)?;
        let dpdir = self.upper_dir(&newdir)?;
        let (sparent, sname) = node.link().ok_or_else(|| errno(libc::EINVAL))?;
        let spdir = self.layers[0].open_dir(&sparent.path())?;
        let tmp = upper.temp();
        rustix::fs::linkat(
            &spdir,
            cname(&sname)?.as_c_str(),
            upper.work(),
            &*tmp,
            AtFlags::empty(),
        )?;
        upper.install(&tmp, &dpdir, newname, false)?;
        let n = self.entered(&newdir, newname)?;
        Ok(n)
    }
}

/// What a created entry gets beyond its kind: the mode asked for (its type bits for a
/// device), owner (None: the daemon's own) and permission bits to present.
struct New {
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    perm: u32,
}

/// Make the new entry as `tmp` in the upper layer's work directory, private to the daemon
/// (0600/0700) until its metadata is set; a new regular file comes back open. A directory
/// over a whiteout (`opaque`) must not show what lies below. With the override xattr
/// (`overridden`), a device is a plain file and the xattr says what it is.
fn make_in_work(
    upper: &Upper,
    tmp: &std::ffi::CStr,
    what: &NewEntry<'_>,
    mode: u32,
    opaque: bool,
    overridden: bool,
) -> io::Result<Option<OwnedFd>> {
    let work = upper.work();
    match what {
        NewEntry::File => {
            return Ok(Some(rustix::fs::openat(
                work,
                tmp,
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?));
        }
        NewEntry::Dir => {
            rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?;
            if opaque {
                let d = rustix::fs::openat(
                    work,
                    tmp,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                upper.make_opaque(&d)?;
            }
        }
        NewEntry::Symlink(target) => {
            rustix::fs::symlinkat(cname(target)?.as_c_str(), work, tmp)?;
        }
        NewEntry::Node(rdev) => {
            let ft = FileType::from_raw_mode(mode);
            let (ft, disk_rdev) = match ft {
                FileType::CharacterDevice | FileType::BlockDevice if overridden => {
                    (FileType::RegularFile, 0)
                }
                _ if overridden => (ft, 0),
                _ => (ft, *rdev),
            };
            rustix::fs::mknodat(work, tmp, ft, Mode::from_raw_mode(0o600), disk_rdev)?;
        }
    }
    Ok(None)
}
