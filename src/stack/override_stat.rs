//! The ownership override xattr (`user.containers.override_stat`, containers-storage's form):
//! `uid:gid:mode[:type]` kept on a file whose real owner, mode or type the filesystem cannot
//! carry (rootless unpacking, `xattr_permissions`). Written by the unpacker and the writable
//! layer, read by the mount: this module is its one definition.

/// The name rootless podman and the unpacker use.
pub const USER_NAME: &str = "user.containers.override_stat";
/// The name only privileged writers can set.
pub const PRIVILEGED_NAME: &str = "security.containers.override_stat";

/// Whether `name` is an override xattr (which an image may never set itself).
pub fn is_override_xattr(name: &[u8]) -> bool {
    name == USER_NAME.as_bytes() || name == PRIVILEGED_NAME.as_bytes()
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
            OverrideXattr::Privileged => PRIVILEGED_NAME.as_bytes(),
            OverrideXattr::User => USER_NAME.as_bytes(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn round_trip() {
        let o = Override {
            uid: 1000,
            gid: 100,
            perm: 0o4755,
            kind: Some((libc::S_IFCHR, libc::makedev(1, 3))),
        };
        assert_eq!(o.format(), "1000:100:4755:char-1-3");
        assert_eq!(Override::parse(o.format().as_bytes()), Some(o));
        assert_eq!(Override::parse(b"0:0:0644").unwrap().kind, None);
        assert!(Override::parse(b"x:0:0644").is_none());
        assert!(is_override_xattr(OverrideXattr::User.name()));
    }
}
