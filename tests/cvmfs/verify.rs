//! A published image verifies on the client, chunk by chunk as it is read.

use super::*;

/// Chunk objects (suffix P) the client downloaded after line `mark` of the log.
fn chunk_downloads_since(mark: usize) -> BTreeSet<String> {
    data_objects_since(mark)
        .into_iter()
        .filter(|rest| rest.ends_with('P'))
        .collect()
}

/// `verify=on` on a real client: a published image's layers check against the records
/// published with them (the job runs, and it downloads only what it reads), and 4 KB read
/// from the middle of a big file downloads the chunk that holds them, not the whole file.
#[test]
fn a_published_image_verifies_on_the_client() {
    let _serial = job_on_the_client();
    let tmp = shared_tempdir();
    let base = std::fs::read(busybox_base_tar(tmp.path())).unwrap();
    // 40 MiB that do not compress: CernVM-FS cuts it into chunks of 4 to 16 MiB.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..40 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let app = tar_bytes(&[
        TarEntry::Dir("proc"),
        TarEntry::Dir("dev"),
        TarEntry::Dir("opt"),
        TarEntry::File("opt/run.sh", b"echo verified run\n"),
        TarEntry::File("opt/big.bin", &big),
    ]);
    let layout = tmp.path().join("layout");
    make_layout(&layout, "v1", &[base, app]);
    let (_, sub, client_repo) = convert_and_publish(
        tmp.path(),
        &layout,
        "example.org/sci/verify:1",
        "stratafs-verify",
    );
    let layers = client_layers(&client_repo);
    let big_on_client = on_client(&layers, "opt/big.bin");
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(&big_on_client, "user.chunks", &mut buf[..]).unwrap();
    let chunks: usize = String::from_utf8_lossy(&buf[..n]).trim().parse().unwrap();
    assert!(chunks >= 3, "the big file is in {chunks} chunks");

    drop_client_cache();
    let work = user_dir(&tmp.path().join("work"));
    let mnt = user_dir(&work.join("mnt"));
    let stats = work.join("stats.json");
    let mark = log_lines();
    {
        let _m = UserMount::new(
            &client_repo,
            "example.org/sci/verify:1",
            &mnt,
            &[
                "--no-prefetch",
                "-o",
                &format!("verify=on,verify_cache=none,stats={}", stats.display()),
            ],
        );
        let out = in_bwrap(&mnt, "--ro-bind", "/opt/run.sh");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "verified run\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            chunk_downloads_since(mark).is_empty(),
            "the job touched no chunk"
        );
        // 4 KiB from the middle of the big file, as the test user.
        let mark = log_lines();
        let at = 20u64 << 20;
        let out = as_user(&[
            "dd".as_ref(),
            format!("if={}", mnt.join("opt/big.bin").display()).as_ref(),
            "bs=4096".as_ref(),
            format!("skip={}", at / 4096).as_ref(),
            "count=1".as_ref(),
            "status=none".as_ref(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, &big[at as usize..at as usize + 4096]);
        let got = chunk_downloads_since(mark);
        assert!(
            !got.is_empty() && got.len() < chunks,
            "4 KiB downloaded {} of {chunks} chunks: {got:?}",
            got.len()
        );
    }
    // What was served was checked: the files the job read, and the blocks of the big file
    // the 4 KiB (and the kernel's read-ahead) came from, not more of it.
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let hashed = stats["verified_bytes"].as_u64().unwrap();
    assert!(
        (1..3 << 20).contains(&hashed),
        "hashed {hashed} bytes: {stats}"
    );
    unpublish(&sub);
}
