//! Prometheus metrics of mounts. Every mount keeps its counters in a [`page::Page`] beside its
//! status file in the runtime directory; the keeper holds it across server restarts. They
//! are served, in Prometheus' text format, by the mount itself (`-o metrics=HOST:PORT`: its
//! keeper serves them), by `stratafs metrics` for every mount on the node, and by the
//! snapshotter for the mounts it handed out ([`node_mounts`] with a group).

pub mod export;
pub mod http;
pub mod page;

pub use crate::exposition::encode;
pub use export::{Seen, mount_families, node_mounts};
