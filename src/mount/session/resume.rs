//! Keeping the [`Journal`] and taking up where a dead server stopped: node ids the kernel
//! holds are adopted when a request names them, open handles reopened when one is used, and
//! a resent request that changed the writable layer answered as it was the first time.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Reply, Session};
use crate::mount::journal::{Journal, Replay, UNIQUE_RESEND};
use crate::mount::wire::{Args, InHeader, op};
use crate::overlay::inode::Attr;

/// Requests whose reply is kept until it is surely delivered: their effect cannot be had twice.
const ONCE_ONLY: &[u32] = &[
    op::MKNOD,
    op::MKDIR,
    op::SYMLINK,
    op::LINK,
    op::CREATE,
    op::UNLINK,
    op::RMDIR,
    op::RENAME,
    op::RENAME2,
];

/// Deepest chain of parents adopted for one node (a guard against a corrupt journal).
const MAX_DEPTH: usize = 4096;

impl Session {
    /// Keep `journal`; `replay`: what an earlier server left in it (a restart).
    pub fn with_journal(mut self, journal: Arc<Journal>, replay: Option<Replay>) -> Session {
        let s = self.configure();
        if let Some(r) = replay {
            let max_fh = r.handles.keys().max().copied().unwrap_or(0).max(r.max_fh);
            s.next_fh.store(max_fh + 1, Ordering::Relaxed);
            s.adoptable.extend(r.nodes);
            s.reopenable.extend(r.handles);
        }
        s.journal = Some(journal);
        self
    }

    pub(crate) fn journal(&self) -> Option<&Journal> {
        self.journal.as_deref()
    }

    /// The node ids and handle a request names, taken up if an earlier server gave them out.
    pub(super) fn take_up(&self, h: &InHeader, args: &Args<'_>) -> Result<(), i32> {
        if self.adoptable.is_empty() && self.reopenable.is_empty() {
            return Ok(());
        }
        self.adopt(h.nodeid, 0)?;
        match args {
            Args::Link { old, .. } => self.adopt(*old, 0)?,
            Args::Rename { newdir, .. } => self.adopt(*newdir, 0)?,
            _ => {}
        }
        let fh = match args {
            Args::Read { fh, .. }
            | Args::Write { fh, .. }
            | Args::Release { fh }
            | Args::Fsync { fh, .. }
            | Args::Fallocate { fh, .. } => Some(*fh),
            Args::Setattr(a) if a.valid & crate::mount::wire::fattr::FH != 0 => Some(a.fh),
            _ => None,
        };
        if let Some(fh) = fh {
            self.reopen(fh, h.nodeid);
        }
        Ok(())
    }

    fn adopt(&self, ino: u64, depth: usize) -> Result<(), i32> {
        if self.ov.has_node(ino) {
            return Ok(());
        }
        let Some((parent, name)) = self.adoptable.get(&ino).map(|e| e.value().clone()) else {
            // A file removed while open, parked by the dead server; else the overlay answers
            // ESTALE.
            let _ = self.ov.adopt_parked(ino);
            return Ok(());
        };
        if depth > MAX_DEPTH {
            return Err(libc::ESTALE);
        }
        self.adopt(parent, depth + 1)?;
        match self.ov.adopt(parent, &name, ino) {
            Ok(()) => {
                self.adoptable.remove(&ino);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(ino, error = %e, "a node of the earlier server is gone");
                Err(e.raw_os_error().unwrap_or(libc::ESTALE))
            }
        }
    }

    fn reopen(&self, fh: u64, ino: u64) {
        if self.handles.contains_key(&fh) {
            return;
        }
        let Some((_, (hino, flags))) = self.reopenable.remove(&fh) else {
            return;
        };
        if hino != ino && ino != 0 && self.adopt(hino, 0).is_err() {
            return;
        }
        let flags = flags as i32 & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
        let opened = if self.ov.is_parked(hino) {
            self.ov.adopt_parked(hino).map(|fd| (fd, true))
        } else {
            self.ov.open(hino, flags, None)
        };
        match opened {
            Ok((fd, writable)) => self.insert_handle(fh, hino, fd, writable),
            Err(e) => {
                tracing::warn!(fh, ino = hino, error = %e, "a handle of the earlier server cannot be opened again")
            }
        }
    }

    /// What to answer a request the kernel sends again (after FUSE_NOTIFY_RESEND) whose
    /// reply was recorded: the same reply, written into `out`.
    pub(super) fn saved_reply(&self, h: &InHeader, out: &mut [u8]) -> Option<Reply> {
        if h.unique & UNIQUE_RESEND == 0 || !ONCE_ONLY.contains(&h.opcode) {
            return None;
        }
        let (error, payload) = self.journal()?.saved_reply(h.unique)?;
        if error != 0 {
            return Some(Reply::Error(error));
        }
        let n = payload.len().min(out.len());
        out[..n].copy_from_slice(&payload[..n]);
        Some(Reply::Data(n))
    }

    /// Record the reply to a request that changed the writable layer, before it is sent.
    pub(super) fn record_reply(&self, h: &InHeader, reply: Reply, out: &[u8]) {
        let Some(j) = self.journal() else { return };
        if !ONCE_ONLY.contains(&h.opcode) {
            return;
        }
        match reply {
            Reply::Data(n) => j.reply(h.unique, 0, &out[..n]),
            Reply::Error(e) => j.reply(h.unique, e, &[]),
            Reply::None => {}
        }
    }

    /// A resent request whose reply was not recorded (the server died between its effect and
    /// its record): what the first try would have answered, judged from what is there now.
    pub(super) fn settle_resent(&self, h: &InHeader, reply: Reply) -> Reply {
        if h.unique & UNIQUE_RESEND == 0 {
            return reply;
        }
        match (h.opcode, reply) {
            (op::UNLINK | op::RMDIR | op::RENAME | op::RENAME2, Reply::Error(libc::ENOENT)) => {
                Reply::Data(0)
            }
            _ => reply,
        }
    }

    /// A resent request that makes `name` in `parent` and finds it there: the dead server made
    /// it and died before recording its reply. Answered with the entry as it is.
    pub(super) fn made_before(
        &self,
        h: &InHeader,
        r: io::Result<Attr>,
        parent: u64,
        name: &[u8],
    ) -> io::Result<Attr> {
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && h.unique & UNIQUE_RESEND != 0 => {
                self.lookup_attr(parent, name)?.ok_or(e)
            }
            r => r,
        }
    }

    /// The same for a resent CREATE: the file the dead server made, opened as asked.
    pub(super) fn created_before(
        &self,
        h: &InHeader,
        e: io::Error,
        parent: u64,
        name: &[u8],
        flags: u32,
    ) -> io::Result<(Attr, u64)> {
        if e.raw_os_error() != Some(libc::EEXIST) || h.unique & UNIQUE_RESEND == 0 {
            return Err(e);
        }
        let a = self.lookup_attr(parent, name)?.ok_or(e)?;
        let flags = flags as i32 & !(libc::O_CREAT | libc::O_EXCL);
        let fh = self.open_handle(a.ino, flags, None)?;
        Ok((a, fh))
    }

    /// Tell the journal the kernel now knows `ino` as `name` in `parent`.
    pub(super) fn note_node(&self, ino: u64, parent: u64, name: &[u8]) {
        if let Some(j) = self.journal() {
            j.node(ino, parent, name);
        }
    }

    /// The node id `name` in `parent` has now, without keeping a reference.
    pub(super) fn peek(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.journal()?;
        // The node only: its attributes would cost a stat of the upper copy.
        let ino = self.ov.lookup(parent, name).ok()??.ino;
        self.ov.forget(ino, 1);
        Some(ino)
    }

    /// After a rename or removal: which node went where, which is gone.
    pub(super) fn note_moves(&self, moved: &[(Option<u64>, u64, &[u8])], gone: &[Option<u64>]) {
        let Some(j) = self.journal() else { return };
        for g in gone.iter().flatten() {
            j.forget(*g);
        }
        for (ino, parent, name) in moved {
            if let Some(ino) = ino {
                j.moved(*ino, *parent, name);
            }
        }
    }

    /// Ask the kernel to send again what the dead server read and never answered.
    pub fn request_resend(&self) -> io::Result<()> {
        let h = crate::mount::wire::out_header(0, crate::mount::wire::notify::RESEND, 0);
        rustix::io::write(&self.dev, &h)?;
        Ok(())
    }
}
