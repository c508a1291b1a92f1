//! The man pages in `man/` are generated from the CLI definitions and must be current:
//! `STRATAFS_WRITE_MAN=1 cargo test --test man` rewrites them after a CLI change.

use std::path::Path;

use clap::CommandFactory;

fn render(cmd: clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out).unwrap();
    out
}

fn pages() -> Vec<(String, Vec<u8>)> {
    let mut pages = vec![(
        "stratafs.1".to_string(),
        render(stratafs::cli::mount::Cli::command()),
    )];
    let top = stratafs::cli::commands::Commands::command();
    for sub in top.get_subcommands() {
        let name: &'static str = Box::leak(format!("stratafs-{}", sub.get_name()).into_boxed_str());
        let cmd = sub
            .clone()
            .name(name)
            .bin_name(format!("stratafs {}", sub.get_name()));
        pages.push((format!("{name}.1"), render(cmd)));
    }
    pages
}

#[test]
fn man_pages_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let write = std::env::var_os("STRATAFS_WRITE_MAN").is_some();
    let mut stale = Vec::new();
    for (name, text) in pages() {
        let p = dir.join(&name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&p, &text).unwrap();
        } else if std::fs::read(&p).ok().as_deref() != Some(&text[..]) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "man pages out of date: {stale:?}; run STRATAFS_WRITE_MAN=1 cargo test --test man"
    );
}
