use clap::Parser;
use tracing_subscriber::EnvFilter;

fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("STRATAFS_LOG").unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn main() {
    let first = std::env::args().nth(1).unwrap_or_default();
    if stratafs::commands::SUBCOMMANDS.contains(&first.as_str()) {
        let c = stratafs::commands::Commands::parse();
        init_logging("info,fuser=error");
        if let Err(e) = stratafs::commands::run(c) {
            eprintln!("stratafs: {e}");
            std::process::exit(1);
        }
        return;
    }
    let cli = stratafs::cli::Cli::parse();
    // fuser warns when it retries an unmount the kernel already did: keep that out.
    let default = if cli.debug {
        "debug"
    } else {
        "warn,fuser=error"
    };
    init_logging(default);
    if let Err(e) = stratafs::cli::run_mount(&cli) {
        eprintln!("stratafs: {e}");
        std::process::exit(1);
    }
}
