//! The `lowerdir=` list, spelled once for whoever writes it (the snapshotter's mounts) and
//! whoever reads it (the mount's options): directories joined by `:`, where `\:` is a literal
//! colon and `\\` a literal backslash, as kernel overlayfs reads it.

use std::path::{Path, PathBuf};

/// `paths`, top first, as one `lowerdir=` value.
pub fn join<P: AsRef<Path>>(paths: &[P]) -> String {
    paths
        .iter()
        .map(|p| {
            p.as_ref()
                .to_string_lossy()
                .replace('\\', "\\\\")
                .replace(':', "\\:")
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// A `lowerdir=` value's directories, top first; empty items are dropped. A backslash before
/// any other character stays as it is.
pub fn split(v: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ (':' | '\\')) => cur.push(e),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            },
            ':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn colons_and_backslashes() {
        let paths = [
            r"/top",
            r"/with:colon",
            r"/back\slash",
            r"/both\:x",
            r"/end\",
        ];
        let v = join(&paths);
        assert_eq!(v, r"/top:/with\:colon:/back\\slash:/both\\\:x:/end\\");
        assert_eq!(split(&v), paths.map(PathBuf::from));
        // What users write by hand: a lone backslash before another character stays.
        assert_eq!(
            split(r"/a\b:/c"),
            vec![PathBuf::from(r"/a\b"), PathBuf::from("/c")]
        );
    }

    proptest! {
        #[test]
        fn split_undoes_join(paths in proptest::collection::vec("/[a-z:\\\\ ]{1,12}", 1..6)) {
            prop_assert_eq!(split(&join(&paths)), paths.iter().map(PathBuf::from).collect::<Vec<_>>());
        }
    }
}
