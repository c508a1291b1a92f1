//! A containerd remote snapshotter (proxy plugin): containerd asks over its Snapshots gRPC API,
//! layers already unpacked in the repository are committed at once (containerd downloads
//! nothing), and every container root is one stratafs mount of the whole stack, made by the
//! snapshotter and handed to containerd as a bind mount ([`roots`]).
//!
//! ```toml
//! [proxy_plugins.stratafs]
//!   type = "snapshot"
//!   address = "/run/stratafs/snapshotter.sock"
//! ```

mod filter;
#[cfg(test)]
mod hostile_tests;
mod roots;
mod service;
mod store;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tracing::info;

pub use service::{LABEL_TARGET, LABELS_DIGEST, Service};
pub use store::Store;

/// What goes wrong, each naming its culprit; mapped onto the gRPC codes containerd turns
/// back into its own errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("state {}: {source}", path.display())]
    State { path: PathBuf, source: io::Error },
    #[error("repository {}: {reason}", path.display())]
    Repository { path: PathBuf, reason: String },
    #[error("config {}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
    #[error("socket {}: {reason}", path.display())]
    Socket { path: PathBuf, reason: String },
    #[error("container root {}: {reason}", path.display())]
    Mount { path: PathBuf, reason: String },
}

impl From<Error> for containerd_snapshots::tonic::Status {
    fn from(e: Error) -> Self {
        use containerd_snapshots::tonic::Status;
        match &e {
            Error::NotFound(_) => Status::not_found(e.to_string()),
            Error::AlreadyExists(_) => Status::already_exists(e.to_string()),
            Error::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            Error::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            _ => Status::internal(e.to_string()),
        }
    }
}

/// The settings, from the command line or a TOML file with the same names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The repository whose `.layers/<xx>/<digest>/layerfs` directories serve as layers.
    pub repository: Option<PathBuf>,
    /// Where snapshots and their metadata live.
    pub root: Option<PathBuf>,
    /// The unix socket containerd connects to.
    pub address: Option<PathBuf>,
    /// Serve Prometheus metrics at `http://HOST:PORT/metrics`.
    pub metrics_address: Option<String>,
    /// stratafs mount options for every container root (`{id}`: the snapshot's number).
    #[serde(default)]
    pub mount_options: Vec<String>,
}

impl Config {
    pub fn read(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.into(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| Error::Config {
            path: path.into(),
            reason: e.message().to_string(),
        })
    }
}

/// Paths end up in mount options, where a comma would split them.
fn no_comma(path: &Path, what: &str) -> Result<(), Error> {
    if path.to_string_lossy().contains(',') {
        return Err(Error::InvalidArgument(format!(
            "{what} {}: a ',' cannot be passed in mount options",
            path.display()
        )));
    }
    Ok(())
}

/// Bind the socket, refusing one a live process serves; a stale one (left by a kill) is
/// replaced.
fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
    let err = |reason: String| Error::Socket {
        path: path.into(),
        reason,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err("in use by a running process".into()));
        }
        let md = std::fs::symlink_metadata(path).map_err(|e| err(e.to_string()))?;
        use std::os::unix::fs::FileTypeExt;
        if !md.file_type().is_socket() {
            return Err(err("exists and is not a socket".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(e.to_string()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    l.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
    Ok(l)
}

/// What the snapshotter's metrics are made of: its own families, and the metrics group its
/// mounts carry (`metrics_group=`), whose mounts' metrics the caller adds.
pub struct Metrics {
    pub families: Arc<dyn Fn() -> Vec<prometheus::proto::MetricFamily> + Send + Sync>,
    pub group: String,
}

/// Serve until SIGTERM or SIGINT. `metrics` is handed what the snapshotter's metrics are made
/// of once it is set up (the caller serves them).
pub fn run(
    repo: &Path,
    root: &Path,
    address: &Path,
    mount_options: Vec<String>,
    metrics: Option<Box<dyn FnOnce(Metrics)>>,
) -> Result<(), Error> {
    let repo_err = |reason: String| Error::Repository {
        path: repo.into(),
        reason,
    };
    let md = std::fs::metadata(repo).map_err(|e| repo_err(e.to_string()))?;
    if !md.is_dir() {
        return Err(repo_err("not a directory".into()));
    }
    no_comma(repo, "repository")?;
    no_comma(root, "state dir")?;
    let repo = std::fs::canonicalize(repo).map_err(|e| repo_err(e.to_string()))?;
    std::fs::create_dir_all(root).map_err(|source| Error::State {
        path: root.into(),
        source,
    })?;
    let root = std::fs::canonicalize(root).map_err(|source| Error::State {
        path: root.into(),
        source,
    })?;
    let store = Store::open(&root)?;
    let listener = bind(address)?;
    let group = format!("snapshotter:{}", root.display());
    let service =
        Arc::new(Service::new(repo.clone(), store, group).with_mount_options(mount_options));
    if let Some(hand) = metrics {
        let s = Arc::clone(&service);
        hand(Metrics {
            families: Arc::new(move || s.metric_families()),
            group: service.group().to_string(),
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Socket {
            path: address.into(),
            reason: format!("runtime: {e}"),
        })?;
    let address = address.to_path_buf();
    let result = rt.block_on(async {
        let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| Error::Socket {
            path: address.clone(),
            reason: e.to_string(),
        })?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        info!(repository = %repo.display(), state = %root.display(), socket = %address.display(), "serving containerd");
        let stop = async {
            use tokio::signal::unix::{SignalKind, signal};
            let (mut term, mut int) = (
                signal(SignalKind::terminate()).expect("signal handler"),
                signal(SignalKind::interrupt()).expect("signal handler"),
            );
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: stopping"),
                _ = int.recv() => info!("SIGINT: stopping"),
            }
        };
        containerd_snapshots::tonic::transport::Server::builder()
            .add_service(containerd_snapshots::server(service))
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .map_err(|e| Error::Socket {
                path: address.clone(),
                reason: e.to_string(),
            })
    });
    let _ = std::fs::remove_file(&address);
    result
}
