//! POSIX corners that outside test suites found, each run on a writable stratafs mount and on
//! kernel overlayfs (the oracle) over the same lower layer, with the same shell script: the
//! two must print the same.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A writable stratafs mount and a writable kernel overlayfs mount of copies of one lower
/// layer, each with its own upper and work directory on the same ext4 filesystem.
struct Both {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    ours: Option<StrataMount>,
    kernel: Option<KernelMount>,
}

impl Both {
    fn new(make_lower: impl Fn(&Path), extra: &[&str]) -> Both {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["l1", "l2", "u1", "w1", "u2", "w2"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        make_lower(&base.join("l1"));
        make_lower(&base.join("l2"));
        let mut opts = vec![format!(
            "upperdir={},workdir={}",
            base.join("u1").display(),
            base.join("w1").display()
        )];
        opts.extend(extra.iter().map(|s| s.to_string()));
        let o: Vec<&str> = opts.iter().map(|s| s.as_str()).collect();
        let ours = StrataMount::with_opts(&[base.join("l1")], &base.join("m1"), &o);
        std::fs::create_dir_all(base.join("m2")).unwrap();
        let mut kopt = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=off,index=off,metacopy=off",
            base.join("l2").display(),
            base.join("u2").display(),
            base.join("w2").display()
        );
        for e in extra {
            kopt.push(',');
            kopt.push_str(e);
        }
        run_ok(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(kopt)
                .arg(base.join("m2")),
        );
        let kernel = KernelMount {
            path: base.join("m2"),
        };
        Both {
            _tmp: tmp,
            base,
            ours: Some(ours),
            kernel: Some(kernel),
        }
    }

    /// Run `script` with bash in each mount (as `user` if given); both outputs.
    fn run(&self, user: Option<&str>, script: &str) -> (String, String) {
        let one = |m: &str| {
            let dir = self.base.join(m);
            let mut cmd = match user {
                Some(u) => {
                    require_tool("runuser");
                    let mut c = Command::new("runuser");
                    c.args(["-u", u, "--", "bash", "-c"]);
                    c
                }
                None => {
                    let mut c = Command::new("bash");
                    c.arg("-c");
                    c
                }
            };
            let out = cmd
                .arg(format!("cd {} && {{ {script}\n}} 2>&1", dir.display()))
                .output()
                .expect("bash runs");
            let text = String::from_utf8_lossy(&out.stdout).replace(&*dir.to_string_lossy(), "M");
            format!("{text}exit {}", out.status.code().unwrap_or(-1))
        };
        (one("m1"), one("m2"))
    }

    /// Run on both and require the same output; returns it.
    fn same(&self, user: Option<&str>, script: &str) -> String {
        let (ours, kernel) = self.run(user, script);
        assert_eq!(
            ours, kernel,
            "stratafs (left) and kernel overlayfs (right) differ on:\n{script}"
        );
        ours
    }

    fn unmount(&mut self) {
        self.ours.take();
        self.kernel.take();
    }
}

#[test]
fn names_of_252_to_255_bytes_work() {
    let both = Both::new(
        |l| {
            std::fs::create_dir_all(l.join("d")).unwrap();
            std::fs::write(l.join("d").join("b".repeat(255)), "low\n").unwrap();
        },
        &[],
    );
    let out = both.same(
        None,
        r#"
        for n in 251 252 253 254 255 256; do
            f=$(printf 'a%.0s' $(seq $n)); touch $f && echo "touch $n ok" || echo "touch $n failed"
        done
        ls | wc -l
        touch d/new                       # d now exists in the upper layer
        l=$(printf 'b%.0s' $(seq 255))
        cat d/$l && echo more >> d/$l && cat d/$l
        mv d/$l d/short && cat d/short && ls d
        rm $(printf 'a%.0s' $(seq 255)) && ls | wc -l
        "#,
    );
    assert!(
        out.contains("touch 255 ok") && out.contains("low\nmore"),
        "{out}"
    );
}

#[test]
fn paths_deeper_than_path_max_work() {
    let comp = "d".repeat(200);
    let c2 = comp.clone();
    let both = Both::new(
        move |l| {
            let mut p = l.to_path_buf();
            let mut dir = rustix::fs::open(
                l,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            for _ in 0..25 {
                let _ =
                    rustix::fs::mkdirat(&dir, c2.as_str(), rustix::fs::Mode::from_raw_mode(0o755));
                dir = rustix::fs::openat(
                    &dir,
                    c2.as_str(),
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                    rustix::fs::Mode::empty(),
                )
                .unwrap();
                p.push(&c2);
            }
            let f = rustix::fs::openat(
                &dir,
                "deep",
                rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
                rustix::fs::Mode::from_raw_mode(0o644),
            )
            .unwrap();
            rustix::io::write(&f, b"bottom\n").unwrap();
        },
        &[],
    );
    let out = both.same(
        None,
        &format!(
            r#"
            c={comp}; root=$PWD
            mkdir new && cd new && n=0
            for i in $(seq 25); do mkdir $c && cd $c || break; n=$i; done
            echo "made depth $n"; echo hi > f && cat f && setfattr -n user.x -v y f && getfattr -n user.x --only-values f; echo
            cd "$root"
            for i in $(seq 25); do cd $c || break; done
            cat deep && echo more >> deep && cat deep && touch made-here && ls
            "#
        ),
    );
    assert!(
        out.contains("made depth 25") && out.contains("bottom\nmore"),
        "{out}"
    );
}

#[test]
fn ro_with_an_upper_layer_is_read_only() {
    let mut both = Both::new(|l| std::fs::write(l.join("f"), "x").unwrap(), &[]);
    both.same(None, "echo upper > in-upper");
    both.unmount();
    let (base, l1) = (both.base.clone(), both.base.join("l1"));
    let ours = StrataMount::with_opts(
        &[l1],
        &base.join("m1"),
        &[
            &format!(
                "upperdir={},workdir={}",
                base.join("u1").display(),
                base.join("w1").display()
            ),
            "ro",
        ],
    );
    let out = run(Command::new("bash").arg("-c").arg(format!(
        "cd {} && cat in-upper && {{ touch new 2>&1; echo $?; }} && ls",
        ours.path.display()
    )));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("upper\n"),
        "the upper layer's content is shown: {text}"
    );
    assert!(
        text.contains("Read-only file system"),
        "touch must fail with EROFS: {text}"
    );
    assert!(
        !base.join("u1/new").exists(),
        "nothing may land in the upper dir"
    );
    drop(ours);
}

#[test]
fn whiteout_devices_cannot_be_made_through_the_mount() {
    let both = Both::new(|_| {}, &[]);
    let out = both.same(
        None,
        r#"
        mkdir x x/d; rmdir x; echo "rmdir $?"
        mknod x/c c 0 0; echo "mknod $?"
        rmdir x/d; ls -A x; rmdir x; echo "rmdir $?"; ls -A
        "#,
    );
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(
        std::fs::read_dir(both.base.join("u1"))
            .unwrap()
            .next()
            .is_none(),
        "nothing left in the upper dir"
    );
}

#[test]
fn set_id_bits_clear_on_unprivileged_writes_and_fallocate() {
    let both = Both::new(|_| {}, &[]);
    let files = ["write", "falloc", "punch", "zero", "keep"];
    let mut setup = String::new();
    for f in files {
        setup.push_str(&format!(
            "head -c 65536 /dev/zero > {f}; chown stratafs-test:stratafs-test {f}; chmod 6666 {f}; stat -c '%n %a' {f} >/dev/null\n"
        ));
    }
    setup.push_str("mkdir -m 1777 pub\n");
    both.same(None, &setup);
    let out = both.same(
        Some("stratafs-test"),
        r#"
        echo x >> write
        fallocate -l 131072 falloc
        fallocate -p -o 0 -l 4096 punch
        fallocate -z -o 0 -l 4096 zero
        cat keep > /dev/null
        exec 3> pub/new; chmod 6775 pub/new; echo x >&3; exec 3>&-
        stat -c '%n %a' write falloc punch zero keep pub/new
        "#,
    );
    // pub/new was created write-only, so its writes bypass the page cache (direct I/O).
    assert!(
        out.contains("write 2666") && out.contains("keep 6666") && out.contains("pub/new 775"),
        "{out}"
    );
}

/// File capabilities go with a write, a truncate and a chown, as the filesystem drops them;
/// asked for before and after (stratafs keeps each file's xattr names between changes), the
/// answers must be the kernel's.
#[test]
fn capabilities_go_with_writes_truncates_and_chowns() {
    let both = Both::new(
        |l| {
            for f in ["w", "t", "c", "keep"] {
                std::fs::write(l.join(f), "lower\n").unwrap();
            }
        },
        &[],
    );
    let cap = "0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=";
    let out = both.same(
        None,
        &format!(
            r#"
        for f in w t c keep new; do
          [ -e $f ] || echo new > $f
          setfattr -n security.capability -v {cap} $f
          getfattr --absolute-names -n security.capability $f 2>&1 | grep -c capability
          getfattr --absolute-names -n user.none $f 2>&1 | grep -c 'No such attribute'
        done
        echo more >> w; echo more >> new
        truncate -s 2 t
        chown 1:1 c
        for f in w t c keep new; do
          echo "$f $(getfattr --absolute-names -n security.capability $f 2>&1 | grep -c 'No such attribute')"
        done
        "#
        ),
    );
    for (f, gone) in [("w", 1), ("t", 1), ("c", 1), ("keep", 0), ("new", 1)] {
        assert!(out.contains(&format!("{f} {gone}\n")), "{f}: {out}");
    }
}

#[test]
fn a_listing_ends_while_its_entries_are_renamed_away_and_back() {
    require_tool("python3");
    let both = Both::new(
        |l| {
            std::fs::create_dir_all(l.join("low")).unwrap();
            for i in 0..100 {
                std::fs::write(l.join("low").join(format!("f{i:03}")), "").unwrap();
            }
        },
        &[],
    );
    let script = r#"
        mkdir new && for i in $(seq 100); do touch new/g$i; done
        python3 - <<'EOF'
import os
for d in ["new", "low"]:
    seen = []
    for e in os.scandir(d):
        seen.append(e.name)
        os.rename(os.path.join(d, e.name), os.path.join(d, "T"))
        os.rename(os.path.join(d, "T"), os.path.join(d, e.name))
        if len(seen) > 1000:
            break
    print(d, len(seen), len(set(seen)))
EOF
    "#;
    let out = both.same(None, script);
    assert!(out.contains("new 100 100"), "{out}");
}

#[test]
fn posix_acls_take_effect_as_on_kernel_overlayfs() {
    require_tool("setfacl");
    let both = Both::new(|l| std::fs::write(l.join("low"), "x").unwrap(), &[]);
    both.same(
        None,
        "touch g && chown stratafs-test:root g && chmod 2755 g && chmod 0777 . && echo ready",
    );
    let out = both.same(
        None,
        r#"
        mkdir d; setfacl -d -m u::r-x,g::r--,o::--- d
        touch d/f; mkdir d/sub; stat -c '%n %A' d/f d/sub; getfacl -cp d/sub
        setfacl -d -m u:1000:rw d; touch d/named; stat -c '%n %A' d/named; getfacl -cp d/named
        touch f; setfacl -m u::rwx,g::rwx,o::rwx f; stat -c '%n %A' f
        setfacl -m u:1000:rw low; stat -c '%n %A' low; getfacl -cp low; chmod 600 low; getfacl -cp low
        umask 027; touch h; mkdir hd; stat -c '%n %a' h hd
        "#,
    );
    assert!(out.contains("d/f -r--r-----"), "{out}");
    assert!(out.contains("f -rwxrwxrwx"), "{out}");
    let out = both.same(
        Some("stratafs-test"),
        "setfacl -m u::rwx,g::rwx,o::rwx g; stat -c '%n %A' g",
    );
    assert!(out.contains("g -rwxrwxrwx"), "set-group-ID cleared: {out}");
}
