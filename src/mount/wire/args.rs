//! Decoding a request's arguments. A request is its header, the opcode's fixed argument
//! structure (`op_in`: what the ring puts in its header buffer, what follows the header in a
//! `/dev/fuse` read) and variable data (names, values, a write's bytes: the ring's payload).
//! Both transports hand the same two slices to [`decode`].

use super::{op, two_names, u32_at, u64_at};

/// The size of each opcode's fixed argument, as the kernel sends it at protocol 7.40 with
/// the INIT flags we ask for (no FUSE_SETXATTR_EXT, no security context). Opcodes not listed
/// have none, or are answered without looking at it.
pub fn fixed_len(opcode: u32) -> usize {
    match opcode {
        op::FORGET | op::MKDIR | op::RENAME | op::LINK | op::OPEN | op::SETXATTR => 8,
        op::GETXATTR | op::LISTXATTR | op::OPENDIR | op::ACCESS | op::INTERRUPT => 8,
        op::BATCH_FORGET => 8,
        op::GETATTR | op::MKNOD | op::FSYNC | op::FSYNCDIR | op::CREATE | op::RENAME2 => 16,
        op::RELEASE | op::RELEASEDIR | op::FLUSH => 24,
        op::IOCTL | op::FALLOCATE => 32,
        op::READ | op::WRITE | op::READDIR | op::READDIRPLUS => 40,
        op::SETATTR => 88,
        op::INIT => 64,
        _ => 0,
    }
}

/// `fuse_setattr_in`: the fields a SETATTR sets, by `fattr` bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    fn parse(o: &[u8]) -> SetattrIn {
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

/// A request's arguments, by opcode. Names borrow from the request's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Args<'a> {
    Lookup {
        name: &'a [u8],
    },
    Forget {
        nlookup: u64,
    },
    /// `count` pairs of (node id, lookups) in `items`.
    BatchForget {
        items: &'a [u8],
    },
    Getattr,
    Setattr(SetattrIn),
    Readlink,
    Symlink {
        name: &'a [u8],
        target: &'a [u8],
    },
    Mknod {
        name: &'a [u8],
        mode: u32,
        rdev: u32,
        umask: u32,
    },
    Mkdir {
        name: &'a [u8],
        mode: u32,
        umask: u32,
    },
    Unlink {
        name: &'a [u8],
    },
    Rmdir {
        name: &'a [u8],
    },
    Rename {
        newdir: u64,
        name: &'a [u8],
        newname: &'a [u8],
        flags: u32,
    },
    Link {
        old: u64,
        name: &'a [u8],
    },
    Open {
        flags: u32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        flags: u32,
        data: &'a [u8],
    },
    Statfs,
    Release {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Fsyncdir,
    Setxattr {
        name: &'a [u8],
        value: &'a [u8],
        flags: i32,
    },
    Getxattr {
        name: &'a [u8],
        size: u32,
    },
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a [u8],
    },
    Flush,
    Init,
    Opendir,
    Readdir {
        offset: u64,
        size: u32,
    },
    Readdirplus {
        offset: u64,
        size: u32,
    },
    Releasedir,
    Access {
        mask: u32,
    },
    Create {
        name: &'a [u8],
        mode: u32,
        umask: u32,
        flags: u32,
    },
    Interrupt,
    Destroy,
    Ioctl,
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    },
    /// Anything else: answered by opcode alone.
    Other(u32),
}

/// Decode `opcode`'s arguments from its fixed part `op_in` (zero-padded to at least
/// [`fixed_len`]) and its variable `data`. EINVAL when the data is shorter than its sizes say.
/// Over 100 lines because it is the table of opcodes, one arm each: it reads best whole.
pub fn decode<'a>(opcode: u32, op_in: &[u8], data: &'a [u8]) -> Result<Args<'a>, i32> {
    let u32_ = |at| u32_at(op_in, at);
    let u64_ = |at| u64_at(op_in, at);
    let name = super::name(data);
    Ok(match opcode {
        op::LOOKUP => Args::Lookup { name },
        op::FORGET => Args::Forget { nlookup: u64_(0) },
        op::BATCH_FORGET => {
            let n = (u32_(0) as usize).checked_mul(16).ok_or(libc::EINVAL)?;
            Args::BatchForget {
                items: data.get(..n).ok_or(libc::EINVAL)?,
            }
        }
        op::GETATTR => Args::Getattr,
        op::SETATTR => Args::Setattr(SetattrIn::parse(op_in)),
        op::READLINK => Args::Readlink,
        op::SYMLINK => {
            let (name, target) = two_names(data);
            Args::Symlink { name, target }
        }
        op::MKNOD => Args::Mknod {
            name,
            mode: u32_(0),
            rdev: u32_(4),
            umask: u32_(8),
        },
        op::MKDIR => Args::Mkdir {
            name,
            mode: u32_(0),
            umask: u32_(4),
        },
        op::UNLINK => Args::Unlink { name },
        op::RMDIR => Args::Rmdir { name },
        op::RENAME | op::RENAME2 => {
            let (name, newname) = two_names(data);
            let flags = if opcode == op::RENAME2 { u32_(8) } else { 0 };
            Args::Rename {
                newdir: u64_(0),
                name,
                newname,
                flags,
            }
        }
        op::LINK => Args::Link { old: u64_(0), name },
        op::OPEN => Args::Open { flags: u32_(0) },
        op::READ => Args::Read {
            fh: u64_(0),
            offset: u64_(8),
            size: u32_(16),
        },
        op::WRITE => {
            let size = (u32_(16) as usize).min(data.len());
            Args::Write {
                fh: u64_(0),
                offset: u64_(8),
                flags: u32_(20),
                data: &data[..size],
            }
        }
        op::STATFS => Args::Statfs,
        op::RELEASE => Args::Release { fh: u64_(0) },
        op::FSYNC => Args::Fsync {
            fh: u64_(0),
            datasync: u32_(8) & 1 != 0,
        },
        op::FSYNCDIR => Args::Fsyncdir,
        op::SETXATTR => {
            let size = u32_(0) as usize;
            let value = data.get(name.len() + 1..name.len() + 1 + size);
            Args::Setxattr {
                name,
                value: value.ok_or(libc::EINVAL)?,
                flags: u32_(4) as i32,
            }
        }
        op::GETXATTR => Args::Getxattr {
            name,
            size: u32_(0),
        },
        op::LISTXATTR => Args::Listxattr { size: u32_(0) },
        op::REMOVEXATTR => Args::Removexattr { name },
        op::FLUSH => Args::Flush,
        op::INIT => Args::Init,
        op::OPENDIR => Args::Opendir,
        op::READDIR | op::READDIRPLUS => {
            let (offset, size) = (u64_(8), u32_(16));
            if opcode == op::READDIR {
                Args::Readdir { offset, size }
            } else {
                Args::Readdirplus { offset, size }
            }
        }
        op::RELEASEDIR => Args::Releasedir,
        op::ACCESS => Args::Access { mask: u32_(0) },
        op::CREATE => Args::Create {
            name,
            flags: u32_(0),
            mode: u32_(4),
            umask: u32_(8),
        },
        op::INTERRUPT => Args::Interrupt,
        op::DESTROY => Args::Destroy,
        op::IOCTL => Args::Ioctl,
        op::FALLOCATE => Args::Fallocate {
            fh: u64_(0),
            offset: u64_(8),
            length: u64_(16),
            mode: u32_(24) as i32,
        },
        o => Args::Other(o),
    })
}
