//! Writing replies: each structure at the kernel's size, into a buffer of fixed capacity.

use crate::overlay::inode::Attr;

/// Appends little-endian fields to a reply buffer of fixed capacity.
pub struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Out<'a> {
    pub fn new(buf: &'a mut [u8]) -> Out<'a> {
        Out { buf, len: 0 }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn room(&self) -> usize {
        self.buf.len() - self.len
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn pad8(&mut self) {
        let pad = (8 - self.len % 8) % 8;
        self.bytes(&[0u8; 8][..pad]);
    }
    /// Hold at most `n` bytes (the size the kernel asked for).
    pub fn limit(&mut self, n: usize) {
        let buf = std::mem::take(&mut self.buf);
        let n = n.min(buf.len());
        self.buf = &mut buf[..n];
    }

    /// The rest of the buffer, for a handler that fills it itself (READ).
    pub fn tail(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// `struct fuse_attr` (88 bytes).
    fn attr(&mut self, a: &Attr) {
        self.u64(a.ino);
        self.u64(a.size);
        self.u64(a.blocks);
        self.u64(a.atime.0 as u64);
        self.u64(a.mtime.0 as u64);
        self.u64(a.ctime.0 as u64);
        self.u32(a.atime.1);
        self.u32(a.mtime.1);
        self.u32(a.ctime.1);
        self.u32(a.mode);
        self.u32(a.nlink.min(u32::MAX as u64) as u32);
        self.u32(a.uid);
        self.u32(a.gid);
        self.u32(a.rdev as u32);
        self.u32(a.blksize);
        self.u32(0);
    }

    /// `struct fuse_entry_out` (128 bytes); `a == None` is a negative entry.
    pub fn entry(&mut self, a: Option<&Attr>, ttl_secs: u64) {
        let zero = Attr::default();
        let attr = a.unwrap_or(&zero);
        self.u64(a.map_or(0, |a| a.ino));
        self.u64(0); // generation
        self.u64(ttl_secs);
        self.u64(ttl_secs);
        self.u32(0);
        self.u32(0);
        self.attr(attr);
    }

    /// `struct fuse_attr_out` (104 bytes).
    pub fn attr_out(&mut self, a: &Attr, ttl_secs: u64) {
        self.u64(ttl_secs);
        self.u32(0);
        self.u32(0);
        self.attr(a);
    }

    /// One `struct fuse_dirent` and its name; `false` when it does not fit.
    pub fn dirent(&mut self, ino: u64, next: u64, mode: u32, name: &[u8]) -> bool {
        let size = (24 + name.len()).next_multiple_of(8);
        if size > self.room() {
            return false;
        }
        self.u64(ino);
        self.u64(next);
        self.u32(name.len() as u32);
        self.u32((mode & libc::S_IFMT) >> 12);
        self.bytes(name);
        self.pad8();
        true
    }

    /// One `struct fuse_direntplus`; `false` when it does not fit.
    pub fn direntplus(&mut self, a: &Attr, ttl_secs: u64, next: u64, name: &[u8]) -> bool {
        let size = (128 + 24 + name.len()).next_multiple_of(8);
        if size > self.room() {
            return false;
        }
        self.entry(Some(a), ttl_secs);
        self.dirent(a.ino, next, a.mode, name)
    }

    /// One `struct fuse_direntplus` without attributes: node id 0 tells the kernel to link
    /// nothing and to look the name up when it needs it; `false` when it does not fit.
    pub fn direntplus_bare(&mut self, ino: u64, kind: u32, next: u64, name: &[u8]) -> bool {
        let size = (128 + 24 + name.len()).next_multiple_of(8);
        if size > self.room() {
            return false;
        }
        self.entry(None, 0);
        self.dirent(ino, next, kind, name)
    }

    /// `struct fuse_statfs_out` (80 bytes).
    pub fn statfs(&mut self, s: &rustix::fs::StatVfs) {
        for v in [s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree] {
            self.u64(v);
        }
        self.u32(s.f_bsize as u32);
        self.u32(s.f_namemax as u32);
        self.u32(s.f_frsize as u32);
        self.bytes(&[0u8; 28]);
    }

    /// `struct fuse_open_out` (16 bytes).
    pub fn open_out(&mut self, fh: u64, flags: u32) {
        self.u64(fh);
        self.u32(flags);
        self.u32(0);
    }

    /// `struct fuse_write_out` (8 bytes).
    pub fn write_out(&mut self, size: u32) {
        self.u32(size);
        self.u32(0);
    }

    /// `struct fuse_getxattr_out`: the size a value or list needs.
    pub fn xattr_size(&mut self, size: usize) {
        self.u32(size as u32);
        self.u32(0);
    }

    /// `struct fuse_open_out` naming a passthrough backing file.
    pub fn open_backing(&mut self, fh: u64, flags: u32, backing_id: i32) {
        self.u64(fh);
        self.u32(flags);
        self.u32(backing_id as u32);
    }

    /// `struct fuse_notify_inval_inode_out` with offset -1: the inode's attributes (its
    /// cached pages stay: a change through the mount updated them already).
    pub fn inval_inode(&mut self, ino: u64) {
        self.u64(ino);
        self.u64(-1i64 as u64);
        self.u64(0);
    }

    /// `struct fuse_notify_inval_entry_out` and the name.
    pub fn inval_entry(&mut self, parent: u64, name: &[u8]) {
        self.u64(parent);
        self.u32(name.len() as u32);
        self.u32(0);
        self.bytes(name);
        self.bytes(&[0]);
    }

    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::wire::u32_at;

    #[test]
    fn reply_structures_have_the_kernels_sizes() {
        let mut buf = vec![0u8; 4096];
        let a = Attr {
            ino: 5,
            mode: libc::S_IFREG | 0o644,
            ..Attr::default()
        };
        let mut o = Out::new(&mut buf);
        o.entry(Some(&a), 1);
        assert_eq!(o.len(), 128);
        o.attr_out(&a, 1);
        assert_eq!(o.len(), 128 + 104);
        let mut o = Out::new(&mut buf);
        assert!(o.dirent(5, 3, a.mode, b"abc"));
        assert_eq!(o.len(), 32, "24-byte dirent + name, padded to 8");
        assert_eq!(u32_at(&buf, 20), libc::DT_REG as u32);
        let mut small = [0u8; 150];
        let mut o = Out::new(&mut small);
        assert!(
            !o.direntplus(&a, 1, 3, b"abc"),
            "160 bytes do not fit in 150"
        );
        assert!(o.is_empty());
        let mut o = Out::new(&mut buf);
        assert!(o.direntplus_bare(9, libc::S_IFLNK, 4, b"ab"));
        assert_eq!(o.len(), 160);
        assert_eq!(
            u64::from_le_bytes(buf[..8].try_into().unwrap()),
            0,
            "node id"
        );
        assert_eq!(
            u64::from_le_bytes(buf[128..136].try_into().unwrap()),
            9,
            "d_ino"
        );
        assert_eq!(u32_at(&buf, 148), libc::DT_LNK as u32);
    }
}
