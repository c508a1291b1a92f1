//! A daemon killed with -9 in the middle of copy-ups leaves the upper layer consistent.

use super::*;

#[test]
fn kill_9_leaves_upper_consistent() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let low = base.join("low");
    std::fs::create_dir_all(low.join("d")).unwrap();
    // Big files so that copy-ups are in flight when the daemon dies.
    for i in 0..8 {
        std::fs::write(low.join(format!("d/big{i}")), vec![i as u8; 64 << 20]).unwrap();
    }
    for d in ["u", "w", "m"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    // One process, no keeper: this is about what a crash leaves in the upper layer.
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},failover=off",
        low.display(),
        base.join("u").display(),
        base.join("w").display()
    );
    let m = base.join("m");
    let mut caught = 0;
    for round in 0..3 {
        let mut cmd = Command::new(BIN);
        cmd.arg("-o").arg(&opts);
        for e in common::transport_opts() {
            cmd.arg("-o").arg(e);
        }
        run_ok(cmd.arg(&m));
        assert_transport(&m);
        let pid = daemon_pid(&m);
        // Writers: copy-ups (appends to big files) and renames, in the background.
        let script = format!(
            "cd {m}; for i in 0 1 2 3 4 5 6 7; do (echo x >> d/big$i; mv d/big$i d/moved{round}$i) & done; \
             for i in $(seq 1 200); do echo $i > f{round}_$i; mv f{round}_$i g{round}_$i; done & wait",
            m = m.display()
        );
        let mut child = Command::new("sh").arg("-c").arg(&script).spawn().unwrap();
        // Kill while a copy-up is half done when there is one to catch (its file open in
        // W/work, partly written); the later rounds may have none left, and die on a timer.
        let t = std::time::Instant::now();
        let deadline = std::time::Duration::from_millis(150 + 100 * round);
        let limit = if round == 0 { deadline * 10 } else { deadline };
        loop {
            if copy_up_in_flight(pid, &base.join("u"), &base.join("w")) {
                caught += 1;
                break;
            }
            if t.elapsed() >= limit {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        run_ok(Command::new("kill").arg("-9").arg(pid.to_string()));
        let _ = child.wait();
        let _ = Command::new("umount").arg("-l").arg(&m).status();
        // Under a real name only what some moment of the workload had: the lower file whole
        // (a finished copy-up), whole and appended to, a new file ("" or "x\n") where the lower
        // one was moved away already; never a part of a copy.
        check_after_kill(&base.join("u/d"));
        // The next mount cleans W and shows a consistent tree.
        let mnt = StrataMount::with_opts(
            std::slice::from_ref(&low),
            &m,
            &[&opts.replace(&format!("lowerdir={},", low.display()), "")],
        );
        let left: Vec<_> = std::fs::read_dir(base.join("w/work")).unwrap().collect();
        assert!(left.is_empty(), "work dir not cleaned: {left:?}");
        let mut sizes = 0;
        for e in walk(&mnt.path) {
            let md = e.symlink_metadata().unwrap();
            if md.is_file() {
                let data = std::fs::read(&e).unwrap();
                assert_eq!(data.len() as u64, md.len(), "{e:?}");
                sizes += 1;
            }
        }
        assert!(sizes >= 8, "files vanished: {sizes}");
        drop(mnt);
    }
    assert!(caught >= 1, "no kill landed during a copy-up");
}

/// Whether daemon `pid` holds a partly written copy open: an unnamed file (O_TMPFILE, shown
/// as `#N (deleted)`) in the upper directory `upper`, or a temporary one in W.
fn copy_up_in_flight(pid: u32, upper: &Path, workdir: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let (u, w) = (upper.to_string_lossy(), workdir.to_string_lossy());
    fds.filter_map(|f| f.ok()).any(|f| {
        std::fs::read_link(f.path()).is_ok_and(|t| {
            let t = t.to_string_lossy();
            (t.starts_with(&*u) && t.ends_with(" (deleted)")) || t.starts_with(&*w)
        }) && std::fs::metadata(f.path())
            .is_ok_and(|m| m.is_file() && m.len() > 0 && m.len() < 64 << 20)
    })
}

/// The files of the upper directory `d` after a kill (see kill_9_leaves_upper_consistent).
fn check_after_kill(d: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(entries) = std::fs::read_dir(d) else {
        return;
    };
    let lower_like = |p: &Path, i: u8| -> Option<bool> {
        // The lower content (64 MiB of byte i), and whether "x\n" follows it.
        let mut f = std::fs::File::open(p).ok()?;
        let len = f.metadata().ok()?.len();
        let mut b = [0u8; 2];
        let whole = 64u64 << 20;
        if len != whole && len != whole + 2 {
            return None;
        }
        for at in [0, whole / 2, whole - 1] {
            f.seek(SeekFrom::Start(at)).ok()?;
            f.read_exact(&mut b[..1]).ok()?;
            if b[0] != i {
                return None;
            }
        }
        if len == whole {
            return Some(false);
        }
        f.read_exact(&mut b).ok()?;
        (&b == b"x\n").then_some(true)
    };
    let names: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    for (n, p) in &names {
        let small = std::fs::read(p).ok().filter(|c| c.len() <= 2);
        if let Some(i) = n.strip_prefix("moved").and_then(|r| r.chars().last()) {
            let i = i.to_digit(10).unwrap() as u8;
            // A move follows a finished append.
            assert!(
                lower_like(p, i) == Some(true) || small.as_deref() == Some(b"x\n"),
                "{p:?}: neither the lower file appended to nor a new file"
            );
        } else if let Some(i) = n.strip_prefix("big") {
            let i: u8 = i.parse().unwrap();
            let moved_away = names.iter().any(|(m, q)| {
                m.starts_with("moved") && m.ends_with(&i.to_string()) && lower_like(q, i).is_some()
            });
            let ok = lower_like(p, i).is_some()
                || (moved_away && matches!(small.as_deref(), Some(b"") | Some(b"x\n")));
            assert!(ok, "{p:?}: a part of a copy-up under its real name");
        }
    }
}
