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
        .with_writer(crate::mount::daemon::LogSink::new)
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
    let args: Vec<String> = std::env::args().collect();
    let first = args.get(1).cloned().unwrap_or_default();
    match (first.as_str(), args.len()) {
        ("help", 2) | ("--help", 2) => return help(true),
        ("-h", 2) => return help(false),
        ("help", _) => return help_for(&args[2]),
        _ => {}
    }
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

/// The mount form's help, then every subcommand with its one line.
fn help(long: bool) -> i32 {
    let mut cmd = <mount::Cli as clap::CommandFactory>::command().after_help(command_list());
    let text = if long {
        cmd.render_long_help()
    } else {
        cmd.render_help()
    };
    out(&text.to_string())
}

/// Print help text; a reader that went away (`| head`) is no error.
fn out(text: &str) -> i32 {
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    0
}

#[cfg(feature = "image")]
fn command_list() -> String {
    let c = <commands::Commands as clap::CommandFactory>::command();
    let width = SUBCOMMANDS.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = String::from("Commands (`stratafs help COMMAND` for each):\n");
    for sc in c.get_subcommands() {
        let about = sc.get_about().map(|a| a.to_string()).unwrap_or_default();
        out += &format!("  {:width$}  {}\n", sc.get_name(), first_clause(&about));
    }
    out
}

/// A command's about text up to its first `: ` or `. ` outside parentheses: the rest is in
/// the command's own help.
#[cfg(feature = "image")]
fn first_clause(about: &str) -> &str {
    let mut depth = 0i32;
    let b = about.as_bytes();
    for (i, c) in b.iter().enumerate() {
        match c {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b':' | b'.' if depth == 0 && b.get(i + 1) == Some(&b' ') => return &about[..i],
            _ => {}
        }
    }
    about.trim_end_matches('.')
}

#[cfg(not(feature = "image"))]
fn command_list() -> String {
    "This build has only the mount form (built without feature 'image').\n".into()
}

/// `stratafs help COMMAND`: that command's help.
fn help_for(name: &str) -> i32 {
    if !SUBCOMMANDS.contains(&name) {
        eprintln!("stratafs: help: unknown command '{name}' (stratafs help lists them)");
        return 2;
    }
    subcommand_help(name)
}

#[cfg(feature = "image")]
fn subcommand_help(name: &str) -> i32 {
    let mut c = <commands::Commands as clap::CommandFactory>::command();
    c.build(); // its usage line then says `stratafs NAME`
    match c.find_subcommand_mut(name) {
        Some(sc) => out(&sc.render_long_help().to_string()),
        None => subcommand(name),
    }
}

#[cfg(not(feature = "image"))]
fn subcommand_help(name: &str) -> i32 {
    subcommand(name)
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
