//! The command line: the fuse-overlayfs-compatible mount form ([`mount`]) and the
//! subcommands ([`commands`]). The one place that sees both halves of the crate.

#[cfg(feature = "image")]
pub mod commands;
pub mod mount;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Subcommand names: anything else is the mount form.
pub const SUBCOMMANDS: &[&str] = &[
    "convert",
    "gc",
    "images",
    "metrics",
    "mount",
    "report",
    "rmi",
    "snapshotter",
    "status",
    "trace",
    "upgrade",
];

/// The subcommand `arg` is a typo of, when it is not a path either: the mount form's first
/// argument is a mountpoint or a source, which exist, or a word of a form like `-o`.
/// The path is looked at last, and never by a keeper's server: its first argument may be the
/// mountpoint, which its keeper mounted and nobody answers yet.
fn mistyped_subcommand(arg: &str) -> Option<&'static str> {
    if arg.is_empty() || arg.starts_with('-') {
        return None;
    }
    SUBCOMMANDS
        .iter()
        .map(|c| (strsim::damerau_levenshtein(arg, c), *c))
        .filter(|&(d, c)| d <= 2 && d < c.len())
        .min()
        .map(|(_, c)| c)
        .filter(|_| !crate::mount::keeper::is_server() && !std::path::Path::new(arg).exists())
}

/// Log lines on stderr: with their time where they go to a file or a journal, without it on
/// a terminal, where a person reads them as they come.
fn init_logging(default: &str) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("STRATAFS_LOG").unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(terminal)
        .with_target(false);
    if terminal {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
}

/// The program: parse, run, and turn any error into one line on stderr. Returns the exit
/// status.
pub fn main() -> i32 {
    let first = std::env::args().nth(1).unwrap_or_default();
    if SUBCOMMANDS.contains(&first.as_str()) {
        return subcommand(&first);
    }
    // The mount.fuse3 form starts with a SOURCE that need not exist; its -o names layers.
    let mount_form = std::env::args().any(|a| a.contains("lowerdir="));
    if let Some(meant) = mistyped_subcommand(&first).filter(|_| !mount_form) {
        eprintln!("stratafs: unknown command '{first}' (did you mean `{meant}`?)");
        return 2;
    }
    let cli = mount::Cli::parse();
    init_logging(if cli.debug { "debug" } else { "warn" });
    match mount::run_mount(&cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("stratafs: {e}");
            1
        }
    }
}

#[cfg(feature = "image")]
fn subcommand(_name: &str) -> i32 {
    let c = commands::Commands::parse();
    init_logging("info");
    match commands::run(c) {
        Ok(()) => 0,
        Err(Error::Reported(code)) => code,
        Err(e) => {
            eprintln!("stratafs: {e}");
            1
        }
    }
}

#[cfg(not(feature = "image"))]
fn subcommand(name: &str) -> i32 {
    eprintln!("stratafs: {name}: this build has no image side (built without feature 'image')");
    2
}

/// What the command line reports: one line naming the culprit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The arguments do not make a command.
    #[error("usage: {0}")]
    Usage(String),
    #[cfg(feature = "image")]
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    Mount(#[from] crate::mount::Error),
    /// A child process ran the command and reported its failure itself: exit with its status.
    #[error("exit status {0}")]
    Reported(i32),
    #[cfg(feature = "snapshotter")]
    #[error(transparent)]
    Snapshotter(#[from] crate::snapshotter::Error),
}

#[cfg(test)]
mod tests {
    #[test]
    fn typos_of_subcommands_are_caught() {
        assert_eq!(super::mistyped_subcommand("mont"), Some("mount"));
        assert_eq!(super::mistyped_subcommand("imgaes"), Some("images"));
        assert_eq!(super::mistyped_subcommand("covnert"), Some("convert"));
        assert_eq!(super::mistyped_subcommand("-o"), None);
        assert_eq!(super::mistyped_subcommand("/"), None);
        assert_eq!(super::mistyped_subcommand("somewhere-else"), None);
    }
}
