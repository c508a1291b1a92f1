//! stratafs against kernel overlayfs on the same generated layer stacks: every name, type,
//! mode, owner, size, ns mtime, link target, content, xattr and hard link must agree.

mod common;
mod stack;

use common::*;

fn compare_stack(layers: &[std::path::PathBuf], base: &std::path::Path) {
    let ours = StrataMount::new(layers, &base.join("strata"));
    let kernel = KernelMount::new(layers, &base.join("kernel"));
    let a = snapshot(&ours.path);
    let b = snapshot_oracle(&kernel.path);
    assert!(b.len() > 1, "generated stack is empty");
    assert_same_tree(&a, &b);
}

#[test]
fn random_stacks_match_kernel_overlayfs() {
    require_root();
    require_tool("fusermount3");
    for seed in 0..16u64 {
        let tmp = tempfile::tempdir().unwrap();
        let layers = stack::make_stack(&tmp.path().join("layers"), seed);
        compare_stack(&layers, tmp.path());
    }
}

#[test]
fn deep_and_wide_trees_match_kernel_overlayfs() {
    require_root();
    require_tool("fusermount3");
    let tmp = tempfile::tempdir().unwrap();
    let layers = stack::make_stack(&tmp.path().join("layers"), 1000);
    stack::add_deep_and_wide(&layers, 5000);
    compare_stack(&layers, tmp.path());
}
