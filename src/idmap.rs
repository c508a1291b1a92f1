//! How owners and modes on disk are presented, and how presented ones are written back:
//! `uidmapping`/`gidmapping` (containers-storage shifting ids instead of chowning layers),
//! `squash_to_uid`/`squash_to_gid`, and `xattr_permissions` (the real owner and mode kept in
//! `user.containers.override_stat` where the files themselves cannot carry them).

use crate::error::Error;
use crate::inode::Attr;

/// The id presented for on-disk ids no mapping covers (the kernel's overflow id).
pub const OVERFLOW_ID: u32 = 65534;

/// One `:container:host:size` range: on-disk id `container + i` is presented as `host + i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub disk: u32,
    pub shown: u32,
    pub size: u32,
}

/// Parse a `uidmapping`/`gidmapping` value: triples separated by `:` (podman writes a leading
/// colon) or `,`.
pub fn parse_mapping(option: &str, v: &str) -> Result<Vec<Range>, Error> {
    let bad = |reason: &str| Error::BadOption {
        option: format!("{option}={v}"),
        reason: reason.into(),
    };
    let nums = v
        .split([':', ','])
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().map_err(|_| bad("ids must be numbers")))
        .collect::<Result<Vec<u32>, Error>>()?;
    if nums.is_empty() || nums.len() % 3 != 0 {
        return Err(bad("expected CONTAINER:HOST:SIZE triples"));
    }
    nums.chunks(3)
        .map(|c| {
            if c[2] == 0
                || c[0].checked_add(c[2] - 1).is_none()
                || c[1].checked_add(c[2] - 1).is_none()
            {
                Err(bad("a range is empty or overflows"))
            } else {
                Ok(Range {
                    disk: c[0],
                    shown: c[1],
                    size: c[2],
                })
            }
        })
        .collect()
}

/// Where the overriding owner and mode live, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideXattr {
    /// `xattr_permissions=1`: a name only privileged writers can set.
    Privileged,
    /// `xattr_permissions=2`: `user.containers.override_stat`, what rootless podman uses.
    User,
}

impl OverrideXattr {
    pub fn name(self) -> &'static [u8] {
        match self {
            OverrideXattr::Privileged => b"security.containers.override_stat",
            OverrideXattr::User => b"user.containers.override_stat",
        }
    }
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

/// The parsed value of an override xattr: `uid:gid:mode[:type]`, mode in octal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Override {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (07777).
    pub perm: u32,
    /// `S_IFMT` bits and device number when the type is given.
    pub kind: Option<(u32, u64)>,
}

impl Override {
    pub fn parse(v: &[u8]) -> Option<Override> {
        let s = std::str::from_utf8(v).ok()?;
        let mut it = s.trim_end_matches('\0').split(':');
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let perm = u32::from_str_radix(it.next()?, 8).ok()? & 0o7777;
        let kind = match it.next() {
            None => None,
            Some(t) => Some(parse_type(t)?),
        };
        Some(Override {
            uid,
            gid,
            perm,
            kind,
        })
    }

    pub fn format(&self) -> String {
        let mut s = format!("{}:{}:{:04o}", self.uid, self.gid, self.perm);
        if let Some((k, rdev)) = self.kind {
            let (ma, mi) = (libc::major(rdev), libc::minor(rdev));
            let t = match k {
                libc::S_IFDIR => "dir".to_string(),
                libc::S_IFLNK => "symlink".to_string(),
                libc::S_IFIFO => "pipe".to_string(),
                libc::S_IFSOCK => "socket".to_string(),
                libc::S_IFCHR => format!("char-{ma}-{mi}"),
                libc::S_IFBLK => format!("block-{ma}-{mi}"),
                _ => "file".to_string(),
            };
            s.push(':');
            s.push_str(&t);
        }
        s
    }
}

fn parse_type(t: &str) -> Option<(u32, u64)> {
    let dev = |rest: &str| -> Option<u64> {
        let (a, b) = rest.split_once('-')?;
        Some(libc::makedev(a.parse().ok()?, b.parse().ok()?))
    };
    Some(match t {
        "dir" => (libc::S_IFDIR, 0),
        "file" => (libc::S_IFREG, 0),
        "symlink" => (libc::S_IFLNK, 0),
        "pipe" => (libc::S_IFIFO, 0),
        "socket" => (libc::S_IFSOCK, 0),
        _ => {
            if let Some(r) = t.strip_prefix("char-") {
                (libc::S_IFCHR, dev(r)?)
            } else if let Some(r) = t.strip_prefix("block-") {
                (libc::S_IFBLK, dev(r)?)
            } else {
                return None;
            }
        }
    })
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
    fn mapping_forms() {
        let m = parse_mapping("uidmapping", ":0:100000:65536").unwrap();
        assert_eq!(
            m,
            [Range {
                disk: 0,
                shown: 100000,
                size: 65536
            }]
        );
        let m = parse_mapping("uidmapping", ":0:1000:1:1:100000:65535").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(parse_mapping("u", "0:1000:1,1:2000:5").unwrap().len(), 2);
        for bad in ["", ":0:1", ":a:1:1", ":0:1:0", ":4294967295:0:2"] {
            let e = parse_mapping("uidmapping", bad).unwrap_err().to_string();
            assert!(e.contains("uidmapping"), "{e}");
        }
    }

    #[test]
    fn present_and_write_back() {
        let map = IdMap {
            uids: parse_mapping("u", ":0:1000:1:1:100000:65535").unwrap(),
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

    #[test]
    fn override_values() {
        let o = Override::parse(b"0:0:0755:dir").unwrap();
        assert_eq!(
            (o.uid, o.gid, o.perm, o.kind),
            (0, 0, 0o755, Some((libc::S_IFDIR, 0)))
        );
        let o = Override::parse(b"5:6:4755").unwrap();
        assert_eq!((o.perm, o.kind), (0o4755, None));
        let o = Override::parse(b"0:0:0600:char-1-3").unwrap();
        assert_eq!(o.kind, Some((libc::S_IFCHR, libc::makedev(1, 3))));
        assert_eq!(o.format(), "0:0:0600:char-1-3");
        assert!(Override::parse(b"x:0:0600").is_none());
        assert!(Override::parse(b"0:0:0600:weird").is_none());
    }
}
