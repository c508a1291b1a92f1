//! A CRI (v1) client that drives containerd as kubelet does: pull, a pod sandbox on the host
//! network, one container, its log, stop and remove. Used by tests/snapshotter/ and
//! benches/cri_pod.rs (included by path, so it is not part of `common`).
#![allow(dead_code)] // each includer uses part of it

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// A pod that is running, with the directory its container logs go to.
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub log_dir: PathBuf,
}

impl Cri {
    pub fn connect(socket: &Path) -> Result<Cri, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let socket = socket.to_path_buf();
        let channel = rt
            .block_on(
                Endpoint::try_from("http://[::]")
                    .map_err(|e| e.to_string())?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    })),
            )
            .map_err(|e| format!("connect to containerd's CRI socket: {e}"))?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// PullImage; returns the image reference to create containers from.
    pub fn pull(&mut self, image: &str) -> Result<String, String> {
        let r = self
            .rt
            .block_on(self.images.pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            }))
            .map_err(|e| format!("PullImage {image}: {e}"))?;
        Ok(r.into_inner().image_ref)
    }

    /// RunPodSandbox on the host network: no CNI plugin is needed, and the pod shares the
    /// host's UTS namespace (so it has no hostname of its own).
    pub fn run_pod(&mut self, name: &str, log_dir: &Path) -> Result<Pod, String> {
        std::fs::create_dir_all(log_dir).map_err(|e| e.to_string())?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .rt
            .block_on(self.runtime.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .map_err(|e| format!("RunPodSandbox: {e}"))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod {
            id,
            config,
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// CreateContainer + StartContainer of `command` in `pod`, wait for it to exit, remove
    /// it; returns the text of its log (CRI lines are "<time> <stream> <tag> <text>"), or an
    /// error if it exited with another status than 0 or ran longer than `within`.
    pub fn run_container(
        &mut self,
        pod: &Pod,
        image_ref: &str,
        command: &[&str],
        within: Duration,
    ) -> Result<Vec<String>, String> {
        let log_name = "job.log";
        let id = self
            .rt
            .block_on(self.runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "job".into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: image_ref.to_string(),
                        ..Default::default()
                    }),
                    command: command.iter().map(|s| s.to_string()).collect(),
                    log_path: log_name.into(),
                    ..Default::default()
                }),
                sandbox_config: Some(pod.config.clone()),
            }))
            .map_err(|e| format!("CreateContainer: {e}"))?
            .into_inner()
            .container_id;
        self.rt
            .block_on(self.runtime.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .map_err(|e| format!("StartContainer: {e}"))?;
        let t = Instant::now();
        let exit_code;
        loop {
            let status = self
                .rt
                .block_on(self.runtime.container_status(ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                }))
                .map_err(|e| format!("ContainerStatus: {e}"))?
                .into_inner()
                .status
                .ok_or("ContainerStatus without a status")?;
            if status.state == ContainerState::ContainerExited as i32 {
                exit_code = status.exit_code;
                break;
            }
            if t.elapsed() > within {
                return Err(format!(
                    "the container did not exit within {} s",
                    within.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = std::fs::read_to_string(pod.log_dir.join(log_name))
            .map_err(|e| format!("the container's log: {e}"))?;
        self.rt
            .block_on(self.runtime.stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 5,
            }))
            .map_err(|e| format!("StopContainer: {e}"))?;
        self.rt
            .block_on(
                self.runtime
                    .remove_container(RemoveContainerRequest { container_id: id }),
            )
            .map_err(|e| format!("RemoveContainer: {e}"))?;
        let lines: Vec<String> = log
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .map(String::from)
            .collect();
        if exit_code != 0 {
            return Err(format!(
                "the container exited with {exit_code}; its log:\n{}",
                lines.join("\n")
            ));
        }
        Ok(lines)
    }

    /// StopPodSandbox + RemovePodSandbox.
    pub fn remove_pod(&mut self, pod: Pod) -> Result<(), String> {
        self.rt
            .block_on(self.runtime.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }))
            .map_err(|e| format!("StopPodSandbox: {e}"))?;
        self.rt
            .block_on(self.runtime.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id,
            }))
            .map_err(|e| format!("RemovePodSandbox: {e}"))?;
        Ok(())
    }

    pub fn pod_count(&mut self) -> Result<usize, String> {
        Ok(self
            .rt
            .block_on(
                self.runtime
                    .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
            )
            .map_err(|e| format!("ListPodSandbox: {e}"))?
            .into_inner()
            .items
            .len())
    }
}
