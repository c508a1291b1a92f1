//! Hostile snapshotter requests, generated: sequences of Prepare, View, Commit, Remove, Stat,
//! Mounts, Update, Usage, List and Cleanup with keys and parents that are empty, `..`,
//! absolute, or full of separators, and labels that point a remote layer at digests that are
//! not digests or at layers the repository does not hold. Every request must answer with a
//! value or an error, never a panic; nothing may be written outside the state directory; the
//! state on disk must reopen to what the service answers; every parent named must exist; and
//! every mount handed out may only name directories of the state or of the repository (roots
//! are not mounted here: `tests/snapshotter/` mounts them).

use std::collections::HashMap;
use std::path::Path;

use containerd_snapshots::Snapshotter;
use proptest::prelude::*;

use super::{LABEL_TARGET, LABELS_DIGEST, Service, Store};
use crate::all_under;
use crate::test_cases as cases;

/// A layer the repository holds.
const HELD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[derive(Debug, Clone)]
enum Op {
    Prepare(String, String, HashMap<String, String>),
    View(String, String, HashMap<String, String>),
    Commit(String, String),
    Remove(String),
    Stat(String),
    Mounts(String),
    Update(String, HashMap<String, String>, Vec<String>),
    Usage(String),
    List(Vec<String>),
    Clear,
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")].prop_map(String::from),
        1 => prop_oneof![
            Just(""),
            Just(".."),
            Just("../../outside"),
            Just("/etc/passwd"),
            Just("a/../../b"),
            Just("a\nb"),
            Just("a,b==c"),
            Just("labels.x"),
        ]
        .prop_map(String::from),
        1 => "[^\\x00]{0,12}",
    ]
}

fn labels() -> impl Strategy<Value = HashMap<String, String>> {
    let name = prop_oneof![
        Just(LABEL_TARGET.to_string()),
        Just(LABELS_DIGEST[0].to_string()),
        Just(LABELS_DIGEST[1].to_string()),
        Just("containerd.io/gc.root".to_string()),
        "[ -~]{0,12}",
    ];
    let value = prop_oneof![
        Just(HELD.to_string()),
        Just("sha256:2222222222222222222222222222222222222222222222222222222222222222".to_string()),
        Just("sha256:../../../outside".to_string()),
        key(),
    ];
    proptest::collection::hash_map(name, value, 0..4)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), key(), labels()).prop_map(|(k, p, l)| Op::Prepare(k, p, l)),
        1 => (key(), key(), labels()).prop_map(|(k, p, l)| Op::View(k, p, l)),
        2 => (key(), key()).prop_map(|(n, k)| Op::Commit(n, k)),
        1 => key().prop_map(Op::Remove),
        1 => key().prop_map(Op::Stat),
        1 => key().prop_map(Op::Mounts),
        1 => (key(), labels(), proptest::collection::vec("labels\\.[ -~]{0,6}|[ -~]{0,8}", 0..3))
            .prop_map(|(k, l, p)| Op::Update(k, l, p)),
        1 => key().prop_map(Op::Usage),
        1 => proptest::collection::vec("[ -~]{0,24}", 0..3).prop_map(Op::List),
        1 => Just(Op::Clear),
    ]
}

fn run(svc: &Service, op: Op) -> Option<Vec<containerd_snapshots::api::types::Mount>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        match op {
            Op::Prepare(k, p, l) => svc.prepare(k, p, l).await.ok(),
            Op::View(k, p, l) => svc.view(k, p, l).await.ok(),
            Op::Commit(n, k) => svc.commit(n, k, HashMap::new()).await.ok().map(|_| vec![]),
            Op::Remove(k) => svc.remove(k).await.ok().map(|_| vec![]),
            Op::Stat(k) => svc.stat(k).await.ok().map(|_| vec![]),
            Op::Mounts(k) => svc.mounts(k).await.ok(),
            Op::Update(k, labels, paths) => {
                let info = containerd_snapshots::Info {
                    name: k,
                    labels,
                    ..Default::default()
                };
                svc.update(info, Some(paths)).await.ok().map(|_| vec![])
            }
            Op::Usage(k) => svc.usage(k).await.ok().map(|_| vec![]),
            Op::List(f) => svc.list(String::new(), f).await.ok().map(|_| vec![]),
            Op::Clear => svc.clear().await.ok().map(|_| vec![]),
        }
    })
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn hostile_snapshotter_requests(ops in proptest::collection::vec(op(), 1..24)) {
        let t = tempfile::tempdir().unwrap();
        let (state, repo, outside) = (t.path().join("state"), t.path().join("repo"), t.path().join("outside"));
        let held = crate::stack::layout::layerfs(&repo, &HELD[7..]);
        std::fs::create_dir_all(&held).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let svc = Service::new(repo.clone(), Store::open(&state).unwrap(), "g".into()).without_mounting();
        for op in ops {
            let mounts = run(&svc, op.clone()).unwrap_or_default();
            for m in mounts {
                let paths = std::iter::once(m.source.clone()).chain(m.options.iter().filter_map(|o| {
                    let (k, v) = o.split_once('=')?;
                    ["lowerdir", "upperdir", "workdir"].contains(&k).then(|| v.to_string())
                }));
                for p in paths.flat_map(|v| crate::stack::lowerdir::split(&v)) {
                    let p = p.as_path();
                    prop_assert!(
                        p == Path::new("stratafs") || p.starts_with(&state) || p.starts_with(&repo),
                        "{op:?} handed out {}", p.display()
                    );
                    prop_assert!(!p.components().any(|c| c == std::path::Component::ParentDir), "{}", p.display());
                }
            }
        }
        prop_assert!(all_under(&outside).is_empty(), "written outside the state directory");
        for p in all_under(t.path()) {
            prop_assert!(
                p.starts_with(&state) || p.starts_with(&repo) || p.starts_with(&outside),
                "{} written", p.display()
            );
        }
        // What is on disk is what the service says, and every parent exists.
        let reopened = Store::open(&state).unwrap();
        let names: Vec<String> = reopened.all().map(|(k, _)| k.clone()).collect();
        for (k, r) in reopened.all() {
            prop_assert!(r.parent.is_empty() || names.contains(&r.parent), "{k}: parent {} missing", r.parent);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            prop_assert!(rt.block_on(svc.stat(k.clone())).is_ok(), "{k} on disk, unknown to the service");
        }
    }
}
