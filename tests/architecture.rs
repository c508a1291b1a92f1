//! The crate's parts depend on each other one way only (see `src/lib.rs`): the overlay core
//! knows nothing of FUSE or images, the image side nothing of mounts. This reads every source
//! file and fails naming the file and the reference that crosses a boundary.

use std::path::{Path, PathBuf};

/// Part -> the parts it may reference through `crate::`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("confined", &[]),
    ("exposition", &[]),
    ("stack", &["stack", "confined"]),
    ("overlay", &["overlay", "stack", "confined"]),
    (
        "mount",
        &["mount", "overlay", "stack", "confined", "exposition"],
    ),
    ("image", &["image", "stack", "confined"]),
    (
        "snapshotter",
        &["snapshotter", "image", "stack", "confined", "exposition"],
    ),
    (
        "cli",
        &[
            "cli",
            "mount",
            "overlay",
            "stack",
            "confined",
            "image",
            "snapshotter",
            "exposition",
        ],
    ),
];

/// Items of `lib.rs` every part may use: test-only helpers (`#[cfg(test)]`), not a part.
const TEST_ITEMS: &[&str] = &["test_cases", "all_under"];

/// External crates a part must not use.
const FORBIDDEN_CRATES: &[(&str, &[&str])] = &[
    ("confined", &["fuser", "ureq", "tar", "flate2", "zstd"]),
    ("stack", &["fuser", "ureq", "tar", "flate2", "zstd"]),
    ("overlay", &["fuser", "ureq", "tar", "flate2", "zstd"]),
    ("image", &["fuser"]),
    ("snapshotter", &["fuser"]),
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn part_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// The parts code names through `crate::`, with where: `crate::a::…`, and every top-level
/// name of a group, `crate::{a::x, b, c::{y, z}}`, over several lines too.
fn crate_refs(code: &str) -> Vec<(usize, String)> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let pos = code.len() - rest.len() + at;
        rest = &rest[at + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at its top-level commas.
            let (mut depth, mut start) = (0, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.push((pos, ident(group[start..i].trim())));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push((pos, ident(group[start..i].trim())));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.push((pos, ident(rest)));
        }
    }
    out.retain(|(_, n)| !n.is_empty());
    out
}

#[test]
fn grouped_imports_are_read() {
    let names = |c: &str| -> Vec<String> { crate_refs(c).into_iter().map(|(_, n)| n).collect() };
    assert_eq!(names("use crate::overlay::Overlay;"), vec!["overlay"]);
    assert_eq!(
        names("use crate::{mount::wire, overlay::{a, b}, image};"),
        vec!["mount", "overlay", "image"]
    );
    assert_eq!(
        names("use crate::{\n    stack::layer,\n    mount::{x, y},\n};"),
        vec!["stack", "mount"]
    );
    assert_eq!(names("let x = 1;"), Vec::<String>::new());
}

#[test]
fn parts_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    assert!(
        all.len() > 30,
        "expected the source tree under {}",
        src.display()
    );
    let mut bad = Vec::new();
    for f in &all {
        let Some(part) = part_of(&src, f) else {
            continue;
        };
        let Some((_, allowed)) = ALLOWED.iter().find(|(p, _)| *p == part) else {
            continue; // lib.rs, main.rs
        };
        let text = std::fs::read_to_string(f).unwrap();
        // The whole file at once, comments out: a `use crate::{…}` may span lines.
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        for (at, name) in crate_refs(&code) {
            if !allowed.contains(&name.as_str()) && !TEST_ITEMS.contains(&name.as_str()) {
                let line = code[..at].matches('\n').count() + 1;
                bad.push(format!("{}:{line}: {part} uses crate::{name}", f.display()));
            }
        }
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if let Some((_, crates)) = FORBIDDEN_CRATES.iter().find(|(p, _)| *p == part) {
                for c in *crates {
                    if code.contains(&format!("{c}::")) && !code.contains(&format!("_{c}::")) {
                        bad.push(format!(
                            "{}:{}: {part} uses the crate {c}",
                            f.display(),
                            i + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "boundary crossed:\n{}", bad.join("\n"));
}

/// Inside `mount/`: the two transports only move bytes into one session, so neither names the
/// other, and the session names neither (only `run.rs`, which starts them, and the test that
/// frames every opcode both ways know both). Any mention in code counts, grouped `use` lists
/// and `super::` paths included.
#[test]
fn transports_and_session_stay_apart() {
    let mount = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/mount");
    let rules: &[(&str, &[&str])] = &[
        ("uring", &["devfuse"]),
        ("devfuse.rs", &["uring"]),
        ("session", &["devfuse", "uring"]),
        ("wire", &["devfuse", "uring", "session"]),
    ];
    let mut bad = Vec::new();
    let mut seen = 0;
    for (part, banned) in rules {
        let p = mount.join(part);
        let mut all = Vec::new();
        if p.is_dir() {
            files(&p, &mut all);
        } else {
            all.push(p.clone());
        }
        assert!(
            !all.is_empty() && all[0].exists(),
            "{} missing",
            p.display()
        );
        for f in all {
            seen += 1;
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for b in *banned {
                    let word = code
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .any(|w| w == *b);
                    if word {
                        bad.push(format!("{}:{}: names {b}", f.display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(seen >= 8, "only {seen} files under {}", mount.display());
    assert!(bad.is_empty(), "transports crossed:\n{}", bad.join("\n"));
}
