//! The on-disk contract of a stack of layer directories, shared by the mount (which merges
//! them live) and the image side (which unpacks layers and builds the flat root): how one
//! layer is reached safely ([`layer`]), the whiteout and opaque forms ([`whiteout`]), the
//! ownership override xattr ([`override_stat`]), and how a path or a directory resolves
//! through the stack ([`resolve`]), the `lowerdir=` list that names a stack ([`lowerdir`]). Nothing here knows FUSE, inodes or registries.

pub mod cvmfs;
pub mod layer;
pub mod layout;
pub mod lowerdir;
pub mod override_stat;
pub mod record;
pub mod resolve;
pub mod trace;
pub mod trust;
pub mod verified;
pub mod verify;
pub mod whiteout;

pub use layer::{Layer, LayerError, RawEntry, RelPath, join};
