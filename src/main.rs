use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = stratafs::cli::Cli::parse();
    // fuser warns when it retries an unmount the kernel already did: keep that out.
    let default = if cli.debug {
        "debug"
    } else {
        "warn,fuser=error"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("STRATAFS_LOG").unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    if let Err(e) = stratafs::cli::run_mount(&cli) {
        eprintln!("stratafs: {e}");
        std::process::exit(1);
    }
}
