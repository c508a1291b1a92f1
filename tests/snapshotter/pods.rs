//! Kubernetes CRI runs a pod from the repository, as kubelet would.

use super::*;

#[test]
fn kubernetes_cri_runs_a_pod_from_the_repository() {
    let fx = fixture();
    let app_layers = registry_layers(&fx.reg, "snap/app:1");
    let host = fx.reg.host();
    let dir = fx.dir.join("cri");
    std::fs::create_dir_all(dir.join("pods")).unwrap();
    // restrict_oom_score_adj: the test may run without CAP_SYS_RESOURCE (in a container),
    // where the sandbox's default oom_score_adj of -998 cannot be set.
    let cri_config = format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
         \x20 sandbox_image = \"{host}/snap/pause:1\"\n\
         \x20 restrict_oom_score_adj = true\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
         \x20 snapshotter = \"stratafs\"\n\
         \x20 disable_snapshot_annotations = false\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
         \x20 bin_dir = \"{0}/cni-bin\"\n\
         \x20 conf_dir = \"{0}/cni-conf\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{host}\"]\n\
         \x20 endpoint = [\"http://{host}\"]\n",
        dir.display()
    );
    let ctrd = Containerd::start(&dir, &fx.repo, Some(&cri_config));
    let fail = |e: String| -> ! { panic!("{e}\n{}", ctrd.log_tail("containerd.log")) };
    let mut cri = Cri::connect(&ctrd.address).unwrap_or_else(|e| fail(e));
    let app = format!("{host}/snap/app:1");
    let image_ref = cri.pull(&app).unwrap_or_else(|e| fail(e));
    assert!(!image_ref.is_empty(), "PullImage returned no image ref");
    let pod = cri
        .run_pod("snap-pod", &dir.join("pods"))
        .unwrap_or_else(|e| fail(e));
    let log = cri
        .run_container(
            &pod,
            &image_ref,
            &[
                "sh",
                "-c",
                "cat /greeting /second; test -e /victim && echo victim-visible; \
                 while read dev mp type rest; do [ \"$mp\" = / ] && echo root=$type; \
                 done < /proc/mounts; true",
            ],
            std::time::Duration::from_secs(120),
        )
        .unwrap_or_else(|e| fail(e));
    assert_eq!(log, ["hello", "two", "root=fuse.stratafs"], "container log");
    assert_eq!(
        ctrd.layer_blobs_in_namespace("k8s.io", &app_layers),
        Vec::<String>::new(),
        "the CRI pull downloaded layer blobs the repository has"
    );
    cri.remove_pod(pod).unwrap_or_else(|e| fail(e));
    assert_eq!(
        cri.pod_count().unwrap_or_else(|e| fail(e)),
        0,
        "pods left after RemovePodSandbox"
    );
}
