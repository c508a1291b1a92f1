//! Property test of the whiteout rules, in both forms and mixed: random layer stacks are
//! mounted by stratafs and compared with an independent model that applies the layers bottom
//! up the way an OCI unpacker does (each layer's whiteouts first, then its entries).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use common::*;

#[derive(Debug, Clone)]
enum E {
    File(u8),
    Dir(D),
    /// 0:0 character device (kernel form).
    CharWhiteout,
}

#[derive(Debug, Clone, Copy)]
enum Opaque {
    No,
    Marker,
    Xattr(&'static str),
}

#[derive(Debug, Clone)]
struct D {
    entries: BTreeMap<String, E>,
    /// `.wh.<name>` files (OCI form).
    whiteouts: BTreeSet<String>,
    opaque: Opaque,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from)
}

fn opaque() -> impl Strategy<Value = Opaque> {
    prop_oneof![
        4 => Just(Opaque::No),
        1 => Just(Opaque::Marker),
        1 => Just(Opaque::Xattr("trusted.overlay.opaque")),
        1 => Just(Opaque::Xattr("user.overlay.opaque")),
        1 => Just(Opaque::Xattr("user.fuseoverlayfs.opaque")),
    ]
}

fn dir(depth: u32) -> BoxedStrategy<D> {
    let leaf = prop_oneof![3 => any::<u8>().prop_map(E::File), 1 => Just(E::CharWhiteout)];
    let entry = if depth == 0 {
        leaf.boxed()
    } else {
        prop_oneof![3 => leaf, 2 => dir(depth - 1).prop_map(E::Dir)].boxed()
    };
    (
        prop::collection::btree_map(name(), entry, 0..4),
        prop::collection::btree_set(name(), 0..2),
        opaque(),
    )
        .prop_map(|(entries, whiteouts, opaque)| D {
            entries,
            whiteouts,
            opaque,
        })
        .boxed()
}

fn realize(d: &D, at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    for (n, e) in &d.entries {
        let p = at.join(n);
        match e {
            E::File(b) => std::fs::write(&p, [*b]).unwrap(),
            E::Dir(sub) => realize(sub, &p),
            E::CharWhiteout => rustix::fs::mknodat(
                rustix::fs::CWD,
                &p,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap(),
        }
    }
    for n in &d.whiteouts {
        std::fs::write(at.join(format!(".wh.{n}")), b"").unwrap();
    }
    match d.opaque {
        Opaque::No => {}
        Opaque::Marker => std::fs::write(at.join(".wh..wh..opq"), b"").unwrap(),
        Opaque::Xattr(x) => {
            rustix::fs::setxattr(at, x, b"y", rustix::fs::XattrFlags::empty()).unwrap()
        }
    }
}

/// The model's merged tree: a file's byte, or a directory.
#[derive(Debug, Clone, PartialEq)]
enum M {
    File(u8),
    Dir(BTreeMap<String, M>),
}

/// Apply one layer's directory onto the tree below it.
fn apply(tree: &mut BTreeMap<String, M>, d: &D) {
    if !matches!(d.opaque, Opaque::No) {
        tree.clear();
    }
    for n in &d.whiteouts {
        tree.remove(n);
    }
    for (n, e) in &d.entries {
        match e {
            E::CharWhiteout => {
                tree.remove(n);
            }
            E::File(b) => {
                tree.insert(n.clone(), M::File(*b));
            }
            E::Dir(sub) => {
                let mut below = match tree.remove(n) {
                    Some(M::Dir(t)) => t,
                    _ => BTreeMap::new(),
                };
                apply(&mut below, sub);
                tree.insert(n.clone(), M::Dir(below));
            }
        }
    }
}

fn flatten(t: &BTreeMap<String, M>, at: &Path, out: &mut BTreeMap<PathBuf, Option<u8>>) {
    for (n, m) in t {
        let p = at.join(n);
        match m {
            M::File(b) => {
                out.insert(p, Some(*b));
            }
            M::Dir(sub) => {
                out.insert(p.clone(), None);
                flatten(sub, &p, out);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn whiteout_rules_match_the_model(mut stack in prop::collection::vec(dir(2), 1..4)) {
        require_root();
        // The root itself is never opaque (kernel overlayfs merges layer roots).
        for d in &mut stack {
            d.opaque = Opaque::No;
        }
        let tmp = tempfile::tempdir().unwrap();
        let layers: Vec<PathBuf> = (0..stack.len()).map(|i| tmp.path().join(format!("l{i}"))).collect();
        for (d, p) in stack.iter().zip(&layers) {
            realize(d, p);
        }
        let mut model = BTreeMap::new();
        for d in stack.iter().rev() {
            apply(&mut model, d);
        }
        let mut want = BTreeMap::new();
        flatten(&model, Path::new(""), &mut want);

        let m = StrataMount::new(&layers, &tmp.path().join("mnt"));
        let got: BTreeMap<PathBuf, Option<u8>> = snapshot(&m.path)
            .into_iter()
            .filter(|(p, _)| !p.as_os_str().is_empty())
            .map(|(p, e)| {
                let v = if e.kind == "dir" { None } else {
                    assert_eq!(e.kind, "file", "{p:?}");
                    Some(e.content.unwrap()[0])
                };
                (p, v)
            })
            .collect();
        prop_assert_eq!(got, want);
    }
}
