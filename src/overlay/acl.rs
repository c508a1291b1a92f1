//! POSIX ACLs on the writable layer. The mount asks the kernel for ACL handling
//! (FUSE_POSIX_ACL): the kernel then checks permissions against ACLs it reads as xattrs, stops
//! applying the umask, and expects us to give new entries what the VFS would: the parent's
//! default ACL, masked by the requested mode (`posix_acl_create`), or the mode less the umask.
//! chmod and `setfacl` keep mode and ACL consistent by themselves, since the upper filesystem
//! does that when we chmod or set the xattr on the upper entry.

/// The xattr holding a file's access ACL.
pub const ACCESS: &str = "system.posix_acl_access";
/// The xattr holding a directory's default ACL.
pub const DEFAULT: &str = "system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ace {
    tag: u16,
    perm: u16,
    id: u32,
}

fn parse(v: &[u8]) -> Option<Vec<Ace>> {
    if v.len() < 4 || (v.len() - 4) % 8 != 0 {
        return None;
    }
    if u32::from_le_bytes(v[..4].try_into().ok()?) != VERSION {
        return None;
    }
    Some(
        v[4..]
            .chunks_exact(8)
            .map(|c| Ace {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

fn format(acl: &[Ace]) -> Vec<u8> {
    let mut v = VERSION.to_le_bytes().to_vec();
    for a in acl {
        v.extend_from_slice(&a.tag.to_le_bytes());
        v.extend_from_slice(&a.perm.to_le_bytes());
        v.extend_from_slice(&a.id.to_le_bytes());
    }
    v
}

/// What a new entry gets under a parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    /// Permission bits (07777) for the new entry.
    pub perm: u32,
    /// Its access ACL, when the result is not expressible as a mode alone.
    pub access: Option<Vec<u8>>,
    /// Its default ACL (directories inherit the parent's).
    pub default: Option<Vec<u8>>,
}

/// The mode and ACLs of a new entry with requested `perm` (07777 bits), whose parent has the
/// default ACL `parent_default` (the xattr value, if any), created with `umask`.
pub fn inherit(perm: u32, umask: u32, parent_default: Option<&[u8]>, is_dir: bool) -> Inherited {
    let Some(mut acl) = parent_default.and_then(parse).filter(|a| !a.is_empty()) else {
        return Inherited {
            perm: perm & !(umask & 0o777),
            access: None,
            default: None,
        };
    };
    let mut mode = perm;
    let mut not_equiv = false;
    let (mut group_obj, mut mask_obj) = (None, None);
    for (i, a) in acl.iter_mut().enumerate() {
        match a.tag {
            USER_OBJ => {
                a.perm &= ((mode >> 6) & 7) as u16;
                mode &= ((a.perm as u32) << 6) | !0o700;
            }
            USER | GROUP => not_equiv = true,
            GROUP_OBJ => group_obj = Some(i),
            OTHER => {
                a.perm &= (mode & 7) as u16;
                mode &= (a.perm as u32) | !0o7;
            }
            MASK => {
                mask_obj = Some(i);
                not_equiv = true;
            }
            _ => {}
        }
    }
    if let Some(i) = mask_obj.or(group_obj) {
        let a = &mut acl[i];
        a.perm &= ((mode >> 3) & 7) as u16;
        mode &= ((a.perm as u32) << 3) | !0o070;
    }
    Inherited {
        perm: mode,
        access: not_equiv.then(|| format(&acl)),
        default: is_dir.then(|| parent_default.map(<[u8]>::to_vec)).flatten(),
    }
}

/// The default ACL of an open directory, if it has one.
pub fn default_of(dir: &std::os::fd::OwnedFd) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 512];
    loop {
        match rustix::fs::fgetxattr(dir, DEFAULT, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Set the inherited ACLs with `set(name, value)` (after the mode is set: setting an access
/// ACL sets the mode too, to the same value).
pub fn apply(
    i: &Inherited,
    mut set: impl FnMut(&str, &[u8]) -> rustix::io::Result<()>,
) -> std::io::Result<()> {
    if let Some(a) = &i.access {
        set(ACCESS, a)?;
    }
    if let Some(d) = &i.default {
        set(DEFAULT, d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        format(
            &entries
                .iter()
                .map(|&(tag, perm, id)| Ace { tag, perm, id })
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn umask_without_a_default_acl() {
        let i = inherit(0o666, 0o022, None, false);
        assert_eq!((i.perm, i.access, i.default), (0o644, None, None));
    }

    #[test]
    fn a_default_acl_masks_the_mode_and_ignores_the_umask() {
        // setfacl -d -m u::r-x,g::r--,o::--- d
        let d = acl(&[
            (USER_OBJ, 5, u32::MAX),
            (GROUP_OBJ, 4, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]);
        let f = inherit(0o666, 0o022, Some(&d), false);
        assert_eq!((f.perm, f.access.is_some()), (0o440, false));
        let dir = inherit(0o777, 0o077, Some(&d), true);
        assert_eq!(dir.perm, 0o540);
        assert_eq!(dir.default.as_deref(), Some(&d[..]));
    }

    #[test]
    fn named_entries_give_an_access_acl_with_a_mask() {
        let d = acl(&[
            (USER_OBJ, 7, u32::MAX),
            (USER, 6, 1000),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 7, u32::MAX),
            (OTHER, 5, u32::MAX),
        ]);
        let f = inherit(0o640, 0, Some(&d), false);
        assert_eq!(f.perm, 0o640);
        let a = parse(f.access.as_deref().unwrap()).unwrap();
        assert_eq!(a.iter().find(|a| a.tag == MASK).unwrap().perm, 4);
        assert_eq!(a.iter().find(|a| a.tag == OTHER).unwrap().perm, 0);
        assert!(parse(b"junk").is_none());
    }
}
