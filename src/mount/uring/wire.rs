//! The bytes of FUSE over io_uring (`include/uapi/linux/fuse.h`): where a request's header,
//! its per-opcode argument and its payload sit in a ring entry's buffers, and the reply
//! structures the read-only front end writes. All little-endian, as the kernel lays them out.

use crate::overlay::inode::Attr;

/// `fuse_uring_cmd` commands (the SQE's `cmd_op`).
pub const CMD_REGISTER: u32 = 1;
pub const CMD_COMMIT_AND_FETCH: u32 = 2;

/// `struct fuse_uring_req_header`: `in_out[128]` (the `fuse_in_header`, then the
/// `fuse_out_header` of the reply), `op_in[128]` (the opcode's first argument),
/// `struct fuse_uring_ent_in_out` (32 bytes).
pub const HEADER_LEN: usize = 128 + 128 + 32;
const OP_IN: usize = 128;
const ENT_COMMIT_ID: usize = 256 + 8;
const ENT_PAYLOAD_SZ: usize = 256 + 16;

/// Opcodes the ring serves (`enum fuse_opcode`).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const READLINK: u32 = 5;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const FLUSH: u32 = 25;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const READDIRPLUS: u32 = 44;
    pub const SETATTR: u32 = 4;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const WRITE: u32 = 16;
    pub const SETXATTR: u32 = 21;
    pub const REMOVEXATTR: u32 = 24;
    pub const CREATE: u32 = 35;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
    /// Requests that change something: refused on a read-only mount.
    pub const MUTATING: &[u32] = &[
        SETATTR,
        SYMLINK,
        MKNOD,
        MKDIR,
        UNLINK,
        RMDIR,
        RENAME,
        LINK,
        WRITE,
        SETXATTR,
        REMOVEXATTR,
        CREATE,
        FALLOCATE,
        RENAME2,
        47, // COPY_FILE_RANGE
        51, // TMPFILE
    ];
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

/// `FUSE_WRITE_KILL_SUIDGID` in `fuse_write_in.write_flags`.
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `FOPEN_KEEP_CACHE` in `fuse_open_out.open_flags`.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `FOPEN_DIRECT_IO` in `fuse_open_out.open_flags`.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `struct fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl InHeader {
    pub fn parse(header: &[u8]) -> InHeader {
        InHeader {
            opcode: u32_at(header, 4),
            unique: u64_at(header, 8),
            nodeid: u64_at(header, 16),
            uid: u32_at(header, 24),
            gid: u32_at(header, 28),
            pid: u32_at(header, 32),
        }
    }
}

/// The opcode's first argument (`op_in`).
pub fn op_in(header: &[u8]) -> &[u8] {
    &header[OP_IN..OP_IN + 128]
}

/// The request's id, to name it in COMMIT_AND_FETCH.
pub fn commit_id(header: &[u8]) -> u64 {
    u64_at(header, ENT_COMMIT_ID)
}

/// How many payload bytes the kernel copied in.
pub fn payload_len(header: &[u8]) -> usize {
    u32_at(header, ENT_PAYLOAD_SZ) as usize
}

/// Write the reply's `fuse_out_header` and payload size into the entry's header buffer.
pub fn set_reply(header: &mut [u8], unique: u64, error: i32, payload: usize) {
    header[0..4].copy_from_slice(&((16 + payload) as u32).to_le_bytes());
    header[4..8].copy_from_slice(&error.to_le_bytes());
    header[8..16].copy_from_slice(&unique.to_le_bytes());
    header[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4].copy_from_slice(&(payload as u32).to_le_bytes());
}

/// The 24-byte `struct fuse_uring_cmd_req` in the SQE's command area.
pub fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_le_bytes());
    c[16..18].copy_from_slice(&qid.to_le_bytes());
    c
}

/// A name argument: NUL-terminated in the payload.
pub fn name(payload: &[u8]) -> &[u8] {
    payload.split(|&b| b == 0).next().unwrap_or(&[])
}

/// Two NUL-terminated names in a row (SYMLINK: name and target; RENAME: old and new).
pub fn two_names(payload: &[u8]) -> (&[u8], &[u8]) {
    let mut it = payload.split(|&b| b == 0);
    (it.next().unwrap_or(&[]), it.next().unwrap_or(&[]))
}

/// `fuse_setattr_in`: the fields a SETATTR sets, by `fattr` bit.
#[derive(Debug, Clone, Copy)]
pub struct SetattrIn {
    pub valid: u32,
    pub fh: u64,
    pub size: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl SetattrIn {
    pub fn parse(o: &[u8]) -> SetattrIn {
        SetattrIn {
            valid: u32_at(o, 0),
            fh: u64_at(o, 8),
            size: u64_at(o, 16),
            atime: (u64_at(o, 32) as i64, u32_at(o, 56)),
            mtime: (u64_at(o, 40) as i64, u32_at(o, 60)),
            mode: u32_at(o, 68),
            uid: u32_at(o, 76),
            gid: u32_at(o, 80),
        }
    }
}

/// `fuse_read_in` (READ, READDIR, READDIRPLUS): file handle, offset, size.
pub fn read_in(op_in: &[u8]) -> (u64, u64, u32) {
    (u64_at(op_in, 0), u64_at(op_in, 8), u32_at(op_in, 16))
}

/// `fuse_release_in`: the file handle.
pub fn release_fh(op_in: &[u8]) -> u64 {
    u64_at(op_in, 0)
}

/// `fuse_getxattr_in` (GETXATTR, LISTXATTR): the caller's buffer size.
pub fn xattr_size(op_in: &[u8]) -> u32 {
    u32_at(op_in, 0)
}

/// `fuse_access_in`: the mask.
pub fn access_mask(op_in: &[u8]) -> u32 {
    u32_at(op_in, 0)
}

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
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_fields() {
        let mut h = vec![0u8; HEADER_LEN];
        h[4..8].copy_from_slice(&op::LOOKUP.to_le_bytes());
        h[8..16].copy_from_slice(&77u64.to_le_bytes());
        h[16..24].copy_from_slice(&1u64.to_le_bytes());
        h[24..28].copy_from_slice(&1000u32.to_le_bytes());
        h[ENT_COMMIT_ID..ENT_COMMIT_ID + 8].copy_from_slice(&77u64.to_le_bytes());
        h[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4].copy_from_slice(&4u32.to_le_bytes());
        let r = InHeader::parse(&h);
        assert_eq!(
            (r.opcode, r.unique, r.nodeid, r.uid),
            (op::LOOKUP, 77, 1, 1000)
        );
        assert_eq!((commit_id(&h), payload_len(&h)), (77, 4));
        set_reply(&mut h, 77, -libc::ENOENT, 0);
        assert_eq!(u32_at(&h, 0), 16);
        assert_eq!(u32_at(&h, 4) as i32, -libc::ENOENT);
        assert_eq!(payload_len(&h), 0);
    }

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
        assert_eq!(&cmd_req(9, 1)[8..18], &[9, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    }
}
