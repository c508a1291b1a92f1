//! containerd runs verified layers and refuses a changed file.

use super::*;

/// `verify=on` through the snapshotter's `--mount-option`: a container runs from layers
/// checked against their records; a file changed in its layer fails the container's read.
#[test]
fn containerd_runs_verified_layers_and_refuses_a_changed_file() {
    let fx = fixture();
    let opts: Vec<String> = [
        "--mount-option",
        "verify=on",
        "--mount-option",
        "verify_cache=none",
    ]
    .map(String::from)
    .to_vec();
    let ctrd = Containerd::start_with(&fx.dir.join("ctrd"), &fx.repo, None, &opts);
    let app = format!("{}/snap/app:1", fx.reg.host());
    ctrd.rpull(&app);
    let run_in = |name: &str, file: &str| {
        run(ctrd.cmd("ctr").args([
            "run",
            "--rm",
            "--snapshotter",
            "stratafs",
            &app,
            name,
            "cat",
            file,
        ]))
    };
    let out = run_in("v1", "/greeting");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\n",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctrd.log_tail("snapshotter.log")
    );
    let second = std::fs::read_dir(fx.repo.join(".layers"))
        .unwrap()
        .flat_map(|x| std::fs::read_dir(x.unwrap().path()).into_iter().flatten())
        .map(|l| l.unwrap().path().join("layerfs/second"))
        .find(|p| p.is_file())
        .expect("a layer holds /second");
    std::fs::write(&second, b"TWO\n").unwrap();
    let out = run_in("v2", "/second");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("Input/output error") && !all.contains("TWO"),
        "{all}"
    );
    let out = run_in("v3", "/greeting");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
}
