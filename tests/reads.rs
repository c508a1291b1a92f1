//! Reading through the mount: many threads at once on a cold mount, the same file held open
//! several times (passthrough needs one backing file per inode), both read paths.

mod common;
mod stack;

use std::io::Read;
use std::sync::Arc;

use common::*;

fn concurrent_readers(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let layers = stack::make_stack(&tmp.path().join("layers"), 77);
    stack::add_deep_and_wide(&layers, 3000);
    let oracle_mount = KernelMount::new(&layers, &tmp.path().join("kernel"));
    let expected = Arc::new(snapshot_oracle(&oracle_mount.path));
    let ours = StrataMount::with_opts(&layers, &tmp.path().join("strata"), extra);
    let root = Arc::new(ours.path.clone());
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let expected = Arc::clone(&expected);
            let root = Arc::clone(&root);
            std::thread::spawn(move || {
                // Every thread walks the whole tree in its own order, all starting cold.
                let mut paths: Vec<_> = expected.keys().cloned().collect();
                let n = paths.len();
                paths.rotate_left(t * n / 16);
                if t % 2 == 1 {
                    paths.reverse();
                }
                for p in paths {
                    let want = &expected[&p];
                    let full = root.join(&p);
                    let md = std::fs::symlink_metadata(&full)
                        .unwrap_or_else(|e| panic!("thread {t}: {p:?}: {e}"));
                    assert_eq!(kind_of(md.file_type()), want.kind, "{p:?}");
                    if let Some(content) = &want.content {
                        assert_eq!(&std::fs::read(&full).unwrap(), content, "{p:?}");
                    }
                    if want.kind == "dir" {
                        let names = std::fs::read_dir(&full).unwrap().count();
                        let want_names = expected
                            .keys()
                            .filter(|k| {
                                k.parent() == Some(p.as_path()) && !k.as_os_str().is_empty()
                            })
                            .count();
                        assert_eq!(names, want_names, "listing of {p:?}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader thread failed");
    }
}

#[test]
fn sixteen_threads_read_a_cold_mount() {
    require_root();
    concurrent_readers(&[]);
}

#[test]
fn sixteen_threads_read_with_passthrough() {
    require_root();
    concurrent_readers(&["passthrough=on"]);
}

#[test]
fn same_file_open_many_times_at_once() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("l");
    std::fs::create_dir(&layer).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(layer.join("big"), &data).unwrap();
    for opts in [&[][..], &["passthrough"][..]] {
        let m = StrataMount::with_opts(std::slice::from_ref(&layer), &tmp.path().join("m"), opts);
        let mut files: Vec<_> = (0..8)
            .map(|_| std::fs::File::open(m.path.join("big")).unwrap())
            .collect();
        for f in files.iter_mut() {
            let mut got = Vec::new();
            f.read_to_end(&mut got).unwrap();
            assert!(got == data, "content differs with {opts:?}");
        }
        drop(files);
        // Executing needs the same: busybox runs while the shell holds it open.
        drop(m);
    }
}
