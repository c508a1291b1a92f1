//! How owners and modes on disk are presented, and how presented ones are written back:
//! `uidmapping`/`gidmapping` (containers-storage shifting ids instead of chowning layers),
//! `squash_to_uid`/`squash_to_gid`, and `xattr_permissions` (the real owner and mode kept in
//! `user.containers.override_stat` where the files themselves cannot carry them).

use super::inode::Attr;
use crate::stack::override_stat::{Override, OverrideXattr};

/// The id presented for on-disk ids no mapping covers (the kernel's overflow id).
pub const OVERFLOW_ID: u32 = 65534;

/// One `:container:host:size` range: on-disk id `container + i` is presented as `host + i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub disk: u32,
    pub shown: u32,
    pub size: u32,
}

/// The ownership view of a mount.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdMap {
    pub uids: Vec<Range>,
    pub gids: Vec<Range>,
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    pub override_xattr: Option<OverrideXattr>,
}

fn to_shown(ranges: &[Range], id: u32) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    ranges
        .iter()
        .find(|r| id >= r.disk && id - r.disk < r.size)
        .map_or(OVERFLOW_ID, |r| r.shown + (id - r.disk))
}

fn to_disk(ranges: &[Range], id: u32) -> Option<u32> {
    if ranges.is_empty() {
        return Some(id);
    }
    ranges
        .iter()
        .find(|r| id >= r.shown && id - r.shown < r.size)
        .map(|r| r.disk + (id - r.shown))
}

impl IdMap {
    pub fn is_identity(&self) -> bool {
        *self == IdMap::default()
    }

    /// Apply the view to attributes read from disk; `ov` is the entry's override xattr value.
    pub fn present(&self, a: &mut Attr, ov: Option<&[u8]>) {
        if let Some(o) = ov.and_then(Override::parse) {
            a.uid = o.uid;
            a.gid = o.gid;
            let kind = match o.kind {
                Some((k, rdev)) if a.kind() == libc::S_IFREG => {
                    a.rdev = rdev;
                    k
                }
                _ => a.kind(),
            };
            a.mode = kind | o.perm;
        }
        a.uid = self
            .squash_uid
            .unwrap_or_else(|| to_shown(&self.uids, a.uid));
        a.gid = self
            .squash_gid
            .unwrap_or_else(|| to_shown(&self.gids, a.gid));
    }

    /// The on-disk owner for a presented one (chown, new files). `None` means "leave as is"
    /// (squashed mounts ignore owner changes, as fuse-overlayfs does).
    pub fn uid_to_disk(&self, uid: u32) -> Option<u32> {
        if self.squash_uid.is_some() {
            return None;
        }
        to_disk(&self.uids, uid)
    }

    pub fn gid_to_disk(&self, gid: u32) -> Option<u32> {
        if self.squash_gid.is_some() {
            return None;
        }
        to_disk(&self.gids, gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_and_write_back() {
        let map = IdMap {
            uids: vec![
                Range {
                    disk: 0,
                    shown: 1000,
                    size: 1,
                },
                Range {
                    disk: 1,
                    shown: 100000,
                    size: 65535,
                },
            ],
            ..Default::default()
        };
        assert_eq!(to_shown(&map.uids, 0), 1000);
        assert_eq!(to_shown(&map.uids, 5), 100004);
        assert_eq!(to_shown(&map.uids, 70000), OVERFLOW_ID);
        assert_eq!(map.uid_to_disk(100004), Some(5));
        assert_eq!(map.uid_to_disk(1000), Some(0));
        assert_eq!(map.uid_to_disk(7), None);
        let sq = IdMap {
            squash_uid: Some(0),
            ..Default::default()
        };
        assert_eq!(sq.uid_to_disk(5), None);
    }
}
