//! The image side: references and digests, manifests, sources (OCI layouts, archives,
//! registries), unpacking layers, building flat roots, the repository layout and its
//! podman store and thin images, recipes, and the `convert` pipeline that ties them.
//! It never depends on the mount side.

pub mod convert;
pub mod digest;
pub mod error;
pub mod flat;
pub mod manifest;
pub mod podman_store;
pub mod publish;
pub mod recipe;
mod records;
pub mod reference;
pub mod registry;
pub mod repo;
pub mod source;
pub mod thin;
pub mod trace;
pub mod unpack;

pub use error::Error;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod registry_hostile_tests;
