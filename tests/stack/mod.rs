//! Random layer stacks for differential tests, in the kernel overlayfs forms (char 0:0
//! whiteouts, `trusted.overlay.opaque`), deterministic per seed.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustix::fs::{AtFlags, CWD, Mode, Timespec, Timestamps};

const NAMES: &[&str] = &[
    "a",
    "b",
    "c",
    "d",
    "etc",
    "lib",
    "usr",
    "x y",
    "ünï",
    "long-name-with.dots.txt",
    ".hidden",
];

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn set_times(p: &Path, rng: &mut StdRng) {
    set_time(
        p,
        rng.random_range(0..2_000_000_000),
        rng.random_range(0..1_000_000_000),
    );
}

/// Set atime and mtime of `p` (not following a symlink) to `sec`.`nsec`.
pub fn set_time(p: &Path, sec: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        CWD,
        c(p),
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

pub fn chown(p: &Path, rng: &mut StdRng) {
    let ids = [0u32, 1000, 65534, 12345];
    let u = ids[rng.random_range(0..ids.len())];
    let g = ids[rng.random_range(0..ids.len())];
    std::os::unix::fs::lchown(p, Some(u), Some(g)).unwrap();
}

pub fn mknod(p: &Path, kind: rustix::fs::FileType, mode: u32, dev: u64) {
    rustix::fs::mknodat(CWD, c(p), kind, Mode::from_raw_mode(mode), dev).unwrap();
}

pub fn whiteout(p: &Path) {
    mknod(p, rustix::fs::FileType::CharacterDevice, 0o600, 0);
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(c(p), name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

struct Gen {
    rng: StdRng,
}

impl Gen {
    fn populate(&mut self, dir: &Path, depth: u32, files: &mut Vec<PathBuf>) {
        let n = self.rng.random_range(0..7);
        for _ in 0..n {
            let name = NAMES[self.rng.random_range(0..NAMES.len())];
            let p = dir.join(name);
            if p.symlink_metadata().is_ok() {
                continue;
            }
            let roll = self.rng.random_range(0..100);
            match roll {
                0..=34 if depth < 4 => {
                    std::fs::create_dir(&p).unwrap();
                    if self.rng.random_bool(0.12) {
                        set_xattr(&p, "trusted.overlay.opaque", b"y");
                    }
                    if self.rng.random_bool(0.15) {
                        set_xattr(&p, "user.dirattr", b"d");
                    }
                    self.populate(&p, depth + 1, files);
                    let modes = [0o755, 0o700, 0o1777, 0o2755];
                    let m = modes[self.rng.random_range(0..modes.len())];
                    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(m))
                        .unwrap();
                    chown(&p, &mut self.rng);
                    set_times(&p, &mut self.rng);
                }
                0..=64 => {
                    let len = self.rng.random_range(0..4000);
                    let data: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
                    std::fs::write(&p, data).unwrap();
                    let modes = [0o644, 0o600, 0o755, 0o4755, 0o640, 0o000];
                    let m = modes[self.rng.random_range(0..modes.len())];
                    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(m))
                        .unwrap();
                    if self.rng.random_bool(0.2) {
                        set_xattr(
                            &p,
                            "user.k",
                            format!("v{}", self.rng.random::<u16>()).as_bytes(),
                        );
                    }
                    chown(&p, &mut self.rng);
                    set_times(&p, &mut self.rng);
                    files.push(p);
                }
                65..=74 => {
                    let targets = ["/etc", "../a", "b", "/nonexistent/x", "a/../../..", "."];
                    let t = targets[self.rng.random_range(0..targets.len())];
                    std::os::unix::fs::symlink(t, &p).unwrap();
                    chown(&p, &mut self.rng);
                    set_times(&p, &mut self.rng);
                }
                75..=78 => {
                    mknod(&p, rustix::fs::FileType::Fifo, 0o644, 0);
                    set_times(&p, &mut self.rng);
                }
                79..=80 => {
                    mknod(
                        &p,
                        rustix::fs::FileType::CharacterDevice,
                        0o666,
                        rustix::fs::makedev(1, 3),
                    );
                    set_times(&p, &mut self.rng);
                }
                81..=92 => whiteout(&p),
                _ => {
                    if !files.is_empty() {
                        let src = files[self.rng.random_range(0..files.len())].clone();
                        std::fs::hard_link(&src, &p).unwrap();
                    }
                }
            }
        }
    }
}

/// Make a stack of 2 to 5 layers under `dir`; returns the layer roots, top first.
pub fn make_stack(dir: &Path, seed: u64) -> Vec<PathBuf> {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
    };
    let n = g.rng.random_range(2..=5);
    let layers: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("l{i}"))).collect();
    for l in layers.iter().rev() {
        std::fs::create_dir_all(l).unwrap();
        let mut files = Vec::new();
        // Several passes at the top level make name collisions between layers likely.
        for _ in 0..3 {
            g.populate(l, 0, &mut files);
        }
        set_times(l, &mut g.rng);
    }
    layers
}

/// Add a deep chain and a wide directory across the stack, with whiteouts from above.
pub fn add_deep_and_wide(layers: &[PathBuf], width: usize) {
    let bottom = layers.last().unwrap();
    let mut deep = bottom.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("leaf"), b"leaf").unwrap();
    let wide = bottom.join("wide");
    std::fs::create_dir_all(&wide).unwrap();
    for i in 0..width {
        std::fs::write(wide.join(format!("f{i:06}")), i.to_string()).unwrap();
    }
    let top = &layers[0];
    std::fs::create_dir_all(top.join("wide")).unwrap();
    for i in (0..width).step_by(7) {
        whiteout(&top.join("wide").join(format!("f{i:06}")));
    }
    for i in 0..width / 10 {
        std::fs::write(top.join("wide").join(format!("new{i:05}")), b"n").unwrap();
    }
}
