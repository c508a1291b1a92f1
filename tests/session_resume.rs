//! A connection served by a server that did not answer its INIT: the first server mounts and
//! answers INIT only, and a second one takes up a copy of the same `/dev/fuse` descriptor with
//! the saved INIT request and reply (as bytes, as a keeper would hand them over) and serves
//! every request after it. Real mount, as root.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use stratafs::mount::devfuse;
use stratafs::mount::session::init::SavedInit;
use stratafs::mount::session::{Passthrough, Session};
use stratafs::overlay::{Config, Overlay};

fn session(lower: &std::path::Path, dev: &Arc<OwnedFd>) -> Session {
    let ov = Overlay::with_config(&Config {
        lowerdirs: vec![lower.to_path_buf()],
        ..Config::default()
    })
    .unwrap();
    Session::new(Arc::new(ov), Arc::clone(dev), Passthrough::Off)
}

#[test]
fn a_second_server_serves_a_connection_from_its_saved_init() {
    require_root();
    let t = shared_tempdir();
    let (lower, mnt) = (t.path().join("lower"), t.path().join("mnt"));
    std::fs::create_dir_all(lower.join("d")).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(lower.join("d/file"), "served by the second server").unwrap();

    let dev: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .expect("/dev/fuse")
        .into();
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        dev.as_raw_fd()
    );
    let data = std::ffi::CString::new(data).unwrap();
    rustix::mount::mount(
        "resume-test",
        &mnt,
        "fuse.stratafs",
        rustix::mount::MountFlags::RDONLY,
        data.as_c_str(),
    )
    .expect("mount(2) of fuse.stratafs");
    let dev = Arc::new(dev);

    // The first server: INIT, then nothing more.
    let first = session(&lower, &dev);
    let saved = devfuse::handshake(&dev, &first, false).expect("INIT");
    let n = saved.negotiated().expect("a saved INIT");
    assert!(n.minor >= 31 && n.max_write > 0, "{n:?}");
    let bytes = saved.to_bytes();
    drop(first);

    // A caller waits for an answer nobody is serving yet.
    let path = mnt.join("d/file");
    let reader = std::thread::spawn(move || std::fs::read_to_string(path));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!reader.is_finished(), "answered before any server served");

    // The second server: a copy of the descriptor (the same open file) and the saved bytes.
    let again = SavedInit::from_bytes(&bytes).expect("saved INIT parses");
    assert_eq!(again, saved);
    let copy = Arc::new(dev.try_clone().unwrap());
    let second = session(&lower, &copy);
    second.resume(&again.negotiated().unwrap());
    let server = std::thread::spawn(move || devfuse::serve(copy, second, 2));

    let content = reader
        .join()
        .unwrap()
        .expect("read through the second server");
    assert_eq!(content, "served by the second server");
    let listing: Vec<_> = std::fs::read_dir(mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listing, vec![std::ffi::OsString::from("file")]);

    drop(dev);
    run_ok(std::process::Command::new("umount").arg(&mnt));
    server.join().unwrap().expect("served until unmounted");
}
