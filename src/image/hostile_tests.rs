//! Hostile bytes, generated, for every parser of the image side: image references, digests,
//! platforms, manifests and indexes, configs, recipes, trace files, and layer tar streams
//! with names and links that try to leave the layer. Each must answer with a value or an
//! error, never a panic, and unpacking must write nothing outside its directory. CI runs a
//! short run (the case counts below); `PROPTEST_CASES=N` runs longer.

use proptest::prelude::*;

use super::digest::Digest;
use super::manifest::{Fetched, ImageConfig, Platform};
use super::recipe::Recipe;
use super::reference::{ImageName, Source};
use super::unpack::{self, Target};
use crate::stack::trace::Trace;

use crate::all_under;
use crate::test_cases as cases;

/// Strings made of the pieces references, paths and JSON are made of, and random ones.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("..".to_string()),
        Just("/".to_string()),
        Just(":".to_string()),
        Just("@".to_string()),
        Just("sha256:".to_string()),
        Just("docker://".to_string()),
        Just("oci:".to_string()),
        Just("docker-archive:".to_string()),
        Just("localhost:5000".to_string()),
        Just("\\0".to_string()),
        Just("*".to_string()),
        "[a-z0-9._-]{0,8}",
        "\\PC{0,6}",
    ];
    proptest::collection::vec(piece, 0..10).prop_map(|v| v.concat())
}

/// JSON values shaped like manifests, indexes, configs and traces, with wrong types where
/// a parser might trust them.
fn hostile_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        hostile_text().prop_map(serde_json::Value::from),
    ];
    let keys = prop_oneof![
        Just("schemaVersion"),
        Just("mediaType"),
        Just("config"),
        Just("layers"),
        Just("manifests"),
        Just("digest"),
        Just("size"),
        Just("platform"),
        Just("architecture"),
        Just("os"),
        Just("rootfs"),
        Just("diff_ids"),
        Just("files"),
        Just("path"),
        Just("offset"),
        Just("image"),
        Just("input"),
        Just("version"),
        Just("output_format"),
        Just("cvmfs_repo"),
        Just("annotations"),
    ];
    leaf.prop_recursive(4, 64, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::vec((keys.clone(), inner), 0..8).prop_map(|kv| {
                serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

proptest! {
    #![proptest_config(cases(600))]

    #[test]
    fn references_digests_platforms(s in hostile_text()) {
        let _ = Digest::parse(&s);
        let _ = Platform::parse(&s);
        let _ = Source::parse(&s);
        if let Ok(n) = ImageName::parse_bare(&s, false) {
            // What becomes a path in the repository stays inside it.
            for p in [n.metadata_path(), n.public_path()] {
                prop_assert!(!p.starts_with('/'), "{p}");
                prop_assert!(p.split('/').all(|c| c != ".." && c != "." && !c.is_empty()), "{p}");
            }
        }
    }

    #[test]
    fn manifests_indexes_configs(v in hostile_json(), media in hostile_text()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        for m in [None, Some(media.as_str()),
                  Some("application/vnd.oci.image.index.v1+json"),
                  Some("application/vnd.docker.distribution.manifest.v2+json")] {
            let _ = Fetched::parse("m", m, &bytes);
        }
        let _ = ImageConfig::parse("c", &bytes);
    }

    #[test]
    fn recipes_and_traces(v in hostile_json(), raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        for bytes in [serde_json::to_vec(&v).unwrap(), serde_yaml_ng::to_string(&v).unwrap().into_bytes(), raw] {
            std::fs::write(&f, &bytes).unwrap();
            let _ = Recipe::load(&f);
            if let Ok(tr) = Trace::load(&f) {
                for file in &tr.files {
                    prop_assert!(!file.path.starts_with('/') && !file.path.split('/').any(|c| c == ".."), "{}", file.path);
                }
            }
        }
    }
}

/// One tar entry of a hostile layer.
#[derive(Debug, Clone)]
struct Entry {
    name: Vec<u8>,
    kind: u8,
    link: Vec<u8>,
    data: Vec<u8>,
}

fn hostile_name() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"..".to_vec()),
        Just(b"/".to_vec()),
        Just(b"./".to_vec()),
        Just(b"etc".to_vec()),
        Just(b"link".to_vec()),
        Just(b"d".to_vec()),
        Just(b".wh.".to_vec()),
        Just(b".wh..wh..opq".to_vec()),
        Just(b"/tmp".to_vec()),
        proptest::collection::vec(1u8..=255, 0..4),
    ];
    proptest::collection::vec(piece, 1..6).prop_map(|v| v.concat())
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        hostile_name(),
        prop_oneof![
            Just(b'0'),
            Just(b'5'),
            Just(b'2'),
            Just(b'1'),
            Just(b'3'),
            Just(b'6'),
            any::<u8>()
        ],
        hostile_name(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(name, kind, link, data)| Entry {
            name,
            kind,
            link,
            data,
        })
}

/// The tar of `entries`, names and link targets written as they are (the tar crate's own
/// builder would refuse them).
fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let name = &e.name[..e.name.len().min(99)];
        let link = &e.link[..e.link.len().min(99)];
        {
            let raw = h.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name);
            raw.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(tar::EntryType::new(e.kind));
        h.set_mode(0o755);
        let data: &[u8] = if e.kind == b'0' { &e.data } else { &[] };
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

proptest! {
    #![proptest_config(cases(400))]

    /// A layer of hostile entries unpacks or fails with an error; nothing appears outside its
    /// directory, whatever the names and links say.
    #[test]
    fn hostile_layers_stay_in_their_directory(entries in proptest::collection::vec(entry(), 1..8), cut in any::<bool>()) {
        let t = tempfile::tempdir().unwrap();
        let (dest, outside) = (t.path().join("layer"), t.path().join("outside"));
        std::fs::create_dir(&dest).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let mut bytes = tar_of(&entries);
        if cut {
            bytes.truncate(bytes.len() / 2);
        }
        let target = Target {
            image: "hostile",
            layer: "sha256:0",
            privileged: rustix::process::geteuid().is_root(),
            max_size: 1 << 20,
        };
        let _ = unpack::unpack(&bytes[..], &dest, &target);
        prop_assert!(all_under(&outside).is_empty(), "written outside: {:?}", all_under(&outside));
        let top: Vec<_> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        prop_assert_eq!(top.len(), 2, "{:?}", top);
        for p in all_under(&dest) {
            prop_assert!(p.starts_with(&dest));
        }
    }
}
