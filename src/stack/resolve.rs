//! Resolving through a stack of layers, top first: the one implementation of the rules that
//! the mount's lookups and listings, the flat builder and hard-link materialisation share.
//!
//! - The topmost layer holding a name decides what it is; a whiteout there (a `.wh.<name>`
//!   file beside it or a 0:0 character device in its place) hides it and everything below.
//! - Directories merge with directories below them until a layer marks its copy opaque
//!   (`.wh..wh..opq` or an opaque xattr), holds a whiteout for it, or holds a non-directory.
//! - A whiteout hides names of the layers below only, never those of its own layer.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;

use rustix::fs::Stat;
use smallvec::{SmallVec, smallvec};

use super::layer::{Layer, RawEntry, RelPath, join};
use super::whiteout::{self, Marker};

/// Layers (their stack indices, top first) that hold a merged entry.
pub type Holders = SmallVec<[u16; 2]>;

fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Whether `layer` holds a `.wh.` whiteout file for `name` in directory `dir`.
fn wh_file(layer: &Layer, dir: &RelPath, name: &[u8]) -> io::Result<bool> {
    match whiteout::whiteout_name(name) {
        Some(wh) => layer.exists(&join(dir, &wh)),
        None => Ok(false),
    }
}

/// Resolve `name` in the merged directory `dir`, whose copies are in `layers` (top first, as
/// stack indices into `stack`). Returns the layers holding the entry (several only for a
/// merged directory) and the top copy's stat; `None` when it does not exist or is whited out.
pub fn child(
    stack: &[Layer],
    layers: &[u16],
    dir: &RelPath,
    name: &[u8],
) -> io::Result<Option<(Holders, Stat)>> {
    let rel = join(dir, name);
    let mut found: Option<(Holders, Stat)> = None;
    for (i, &l) in layers.iter().enumerate() {
        let layer = &stack[l as usize];
        // Whiteout files and opaque markers only decide whether to go on below this layer.
        let last = i + 1 == layers.len();
        match layer.stat(&rel)? {
            Some(st) if whiteout::is_char_whiteout(st.st_mode, st.st_rdev) => break,
            Some(st) => {
                match &mut found {
                    None => found = Some((smallvec![l], st)),
                    // A non-directory below a directory ends the merge.
                    Some(_) if !is_dir(&st) => break,
                    Some((ls, _)) => ls.push(l),
                }
                let merging = found.as_ref().is_some_and(|(_, top)| is_dir(top));
                if last || !merging || wh_file(layer, dir, name)? || layer.is_opaque_dir(&rel)? {
                    break;
                }
            }
            None => {
                if last || wh_file(layer, dir, name)? {
                    break;
                }
            }
        }
    }
    Ok(found)
}

/// Resolve a whole relative path from the root of the stack (every layer of `stack`).
pub fn path(stack: &[Layer], rel: &RelPath) -> io::Result<Option<(Holders, Stat)>> {
    let mut layers: Holders = (0..stack.len() as u16).collect();
    let mut dir: Vec<u8> = Vec::new();
    let mut out = None;
    let comps: Vec<&[u8]> = rel
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    for (i, c) in comps.iter().enumerate() {
        if *c == b".." || whiteout::classify(c) != Marker::Entry {
            return Ok(None);
        }
        let Some((holders, st)) = child(stack, &layers, &dir, c)? else {
            return Ok(None);
        };
        if i + 1 < comps.len() && !is_dir(&st) {
            return Ok(None);
        }
        dir = join(&dir, c);
        layers = holders.clone();
        out = Some((holders, st));
    }
    Ok(out)
}

/// One visible entry of a merged directory.
#[derive(Debug, Clone)]
pub struct Merged {
    pub entry: RawEntry,
    /// Stack index of the topmost layer holding it.
    pub top: u16,
    /// A layer below `top` holds the name too (a directory there may merge with it).
    pub below: bool,
}

/// The visible entries of the merged directory `dir` whose copies are in `layers` (top first,
/// already cut at the first opaque one), in layer order, each once.
pub fn merge_dir(stack: &[Layer], layers: &[u16], dir: &RelPath) -> io::Result<Vec<Merged>> {
    let mut out: Vec<Merged> = Vec::new();
    // Names decided by an upper layer: shown (at that index of `out`) or hidden by a whiteout.
    let mut decided: HashMap<Vec<u8>, Option<usize>> = HashMap::new();
    for (i, &l) in layers.iter().enumerate() {
        let raw = match stack[l as usize].read_dir(dir) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        // The bottom layer decides nothing for a layer below it: its names are only looked up
        // (most directories of an image live in one layer, so most listings hash nothing).
        let bottom = i + 1 == layers.len();
        out.reserve(raw.len());
        let mut hidden_below: Vec<Vec<u8>> = Vec::new();
        for e in raw {
            match whiteout::classify(&e.name) {
                Marker::Whiteout(target) => hidden_below.push(target.to_vec()),
                Marker::Opaque | Marker::Internal => {}
                Marker::Entry if e.char_whiteout => hidden_below.push(e.name),
                Marker::Entry => {
                    let seen = if bottom {
                        decided.get(&e.name).copied()
                    } else {
                        match decided.entry(e.name.clone()) {
                            Entry::Occupied(o) => Some(*o.get()),
                            Entry::Vacant(v) => {
                                v.insert(Some(out.len()));
                                None
                            }
                        }
                    };
                    match seen {
                        None => out.push(Merged {
                            entry: e,
                            top: l,
                            below: false,
                        }),
                        Some(Some(shown)) => out[shown].below = true,
                        Some(None) => {} // whited out above
                    }
                }
            }
        }
        // A whiteout hides names of the layers below only, never its own layer's.
        for name in hidden_below {
            decided.entry(name).or_insert(None);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// top: d/ (opaque by xattr-free marker), x (char-device-free .wh. form), f
    /// bottom: d/old, x, f, keep
    fn stack() -> (tempfile::TempDir, Vec<Layer>) {
        let t = tempfile::tempdir().unwrap();
        let (top, bot) = (t.path().join("top"), t.path().join("bot"));
        fs::create_dir_all(bot.join("d")).unwrap();
        fs::create_dir_all(bot.join("m")).unwrap();
        fs::write(bot.join("d/old"), "").unwrap();
        fs::write(bot.join("m/low"), "").unwrap();
        fs::write(bot.join("x"), "").unwrap();
        fs::write(bot.join("f"), "bottom").unwrap();
        fs::write(bot.join("keep"), "").unwrap();
        fs::create_dir_all(top.join("d")).unwrap();
        fs::create_dir_all(top.join("m")).unwrap();
        fs::write(top.join("d/.wh..wh..opq"), "").unwrap();
        fs::write(top.join("d/new"), "").unwrap();
        fs::write(top.join("m/high"), "").unwrap();
        fs::write(top.join(".wh.x"), "").unwrap();
        fs::write(top.join("f"), "top").unwrap();
        let layers = vec![Layer::open(0, &top).unwrap(), Layer::open(1, &bot).unwrap()];
        (t, layers)
    }

    #[test]
    fn child_rules() {
        let (_t, s) = stack();
        let all = [0u16, 1];
        assert!(child(&s, &all, b"", b"x").unwrap().is_none(), "whited out");
        let (h, st) = child(&s, &all, b"", b"f").unwrap().unwrap();
        assert_eq!((h.as_slice(), st.st_size), (&[0u16][..], 3));
        assert_eq!(
            child(&s, &all, b"", b"d").unwrap().unwrap().0.as_slice(),
            [0]
        );
        assert_eq!(
            child(&s, &all, b"", b"m").unwrap().unwrap().0.as_slice(),
            [0, 1]
        );
        assert!(child(&s, &all, b"", b"keep").unwrap().is_some());
    }

    #[test]
    fn paths_and_listings() {
        let (_t, s) = stack();
        assert!(
            path(&s, b"d/old").unwrap().is_none(),
            "opaque dir hides below"
        );
        assert!(path(&s, b"d/new").unwrap().is_some());
        assert!(
            path(&s, b"m/low").unwrap().is_some(),
            "merged dir shows below"
        );
        assert!(path(&s, b"x/y").unwrap().is_none());
        assert!(path(&s, b"f/y").unwrap().is_none());
        assert!(path(&s, b"../etc").unwrap().is_none());
        let mut names: Vec<String> = merge_dir(&s, &[0, 1], b"")
            .unwrap()
            .into_iter()
            .map(|m| String::from_utf8(m.entry.name).unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["d", "f", "keep", "m"]);
        // Which names a layer below the top one holds too (x is whited out, not listed).
        let mut below: Vec<(String, u16, bool)> = merge_dir(&s, &[0, 1], b"")
            .unwrap()
            .into_iter()
            .map(|m| (String::from_utf8(m.entry.name).unwrap(), m.top, m.below))
            .collect();
        below.sort();
        let want = [
            ("d", 0, true),
            ("f", 0, true),
            ("keep", 1, false),
            ("m", 0, true),
        ];
        assert_eq!(below, want.map(|(n, t, b)| (n.to_string(), t, b)));
        let m: Vec<_> = merge_dir(&s, &[0, 1], b"m").unwrap();
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn names_too_long_for_a_whiteout() {
        let (t, _) = stack();
        let long = "a".repeat(255);
        fs::write(t.path().join("bot").join(&long), "x").unwrap();
        let s = vec![
            Layer::open(0, &t.path().join("top")).unwrap(),
            Layer::open(1, &t.path().join("bot")).unwrap(),
        ];
        assert!(child(&s, &[0, 1], b"", long.as_bytes()).unwrap().is_some());
    }
}
