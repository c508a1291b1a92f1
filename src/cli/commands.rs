//! The subcommands beside the mount form: `stratafs convert`, `stratafs gc`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing::{info, warn};

use super::Error;
use crate::image::Error as ImageError;
use crate::image::convert::{self, Options};
use crate::image::manifest::Platform;
use crate::image::publish;
use crate::image::recipe::Recipe;
use crate::image::reference::{ImageName, Source};
use crate::image::repo::Repo;
use crate::mount::options::MountOptions;
use crate::mount::plan::MountPlan;

#[derive(Debug, Parser)]
#[command(name = "stratafs", version)]
pub struct Commands {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Convert images into a CernVM-FS style repository: one unpacked directory per layer
    /// (.layers), the merged root (.flat), metadata and a public link per image.
    ///
    /// IMAGE is oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG],
    /// docker://REGISTRY/REPO:TAG, https://REGISTRY/REPO:TAG (DUCC's form) or
    /// http://REGISTRY/REPO:TAG for a plain-HTTP registry; @sha256:… pins a digest; a `*` in a
    /// registry tag matches against the registry's tag list.
    Convert(ConvertArgs),
    /// List the images of a repository: name, config digest, layers, size.
    Images(ImagesArgs),
    /// Mount an image of a repository by name or digest: its layer directories stacked
    /// lazily (read-only; writable with --upper and --work).
    Mount(MountArgs),
    /// Summarise an access log: files and bytes read against the image's totals, per layer,
    /// and how many of the reads a prefetch served.
    Report(ReportArgs),
    /// Save an access log as the image's trace in the repository: every later mount of the
    /// image reads the traced files ahead, in the order the log saw them first read.
    Trace(TraceArgs),
    /// Remove layers and flat roots that no image of the repository uses any more.
    Gc(GcArgs),
    /// Remove images from the repository by name (their layers stay until `gc`).
    Rmi(RmiArgs),
    /// Show who serves a mount: the server and keeper processes, restarts, the transport,
    /// the writable layer.
    Status(StatusArgs),
    /// Prometheus metrics of every stratafs mount on this node (root: every user's): printed
    /// once, or served at http://ADDR/metrics with --listen. One endpoint for podman's many
    /// mounts.
    Metrics(MetricsArgs),
    /// Hand a live mount to another stratafs binary (after a package upgrade): the keeper
    /// starts it on the same connection; no request fails.
    Upgrade(UpgradeArgs),
    /// Serve containerd's Snapshots API on a unix socket (a proxy snapshotter): layers the
    /// repository holds are used in place, container roots are stratafs mounts.
    #[cfg(feature = "snapshotter")]
    Snapshotter(SnapshotterArgs),
}

#[cfg(feature = "snapshotter")]
#[derive(Debug, clap::Args)]
pub struct SnapshotterArgs {
    /// The repository whose .layers/<xx>/<digest>/layerfs directories serve as layers.
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
    /// State directory: snapshot metadata and the directories of local snapshots.
    #[arg(long, value_name = "STATE_DIR")]
    root: Option<PathBuf>,
    /// The unix socket containerd connects to (its proxy_plugins address).
    #[arg(long, value_name = "SOCKET")]
    address: Option<PathBuf>,
    /// Serve Prometheus metrics of the snapshotter and of every mount it handed out at
    /// http://HOST:PORT/metrics (off by default).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_address: Option<String>,
    /// A stratafs mount option for every container root, repeatable (io_uring=off,
    /// passthrough=on, access_log=DIR/{id}.log with {id} the snapshot's number, …).
    #[arg(long = "mount-option", value_name = "OPT")]
    mount_options: Vec<String>,
    /// A TOML file with the same settings (repository, root, address, metrics_address,
    /// mount_options); options given on the command line win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The repository directory (created if missing).
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// A DUCC wishlist (recipe) file: its `input` list is converted.
    #[arg(long, value_name = "FILE")]
    recipe: Option<PathBuf>,
    /// Platform to pick from an image index.
    #[arg(long, default_value = "linux/amd64", value_name = "OS/ARCH[/VARIANT]")]
    platform: String,
    /// Layers fetched and unpacked in parallel.
    #[arg(long, short = 'j', default_value_t = 4)]
    jobs: usize,
    /// The most one layer may unpack to, in bytes or with a K, M, G or T suffix (powers of
    /// 1024): a layer that inflates beyond it is refused, nothing of it kept.
    #[arg(long, value_name = "SIZE", default_value = "64G", value_parser = parse_size)]
    max_layer_size: u64,
    /// Check every layer (and flat root) of the given images against its record, every byte
    /// hashed; fetch again those that differ or have no readable record (converted before
    /// records existed; with --sign: none signed by that key), check their digests and put
    /// them in place with one; then name every layer of the repository that still has none.
    #[arg(long)]
    repair: bool,
    /// Sign each layer's record with this Ed25519 private key (PEM, as `openssl genpkey
    /// -algorithm ed25519` writes it); mounts check it with --trust / -o verify_trust=.
    /// With --repair, layers whose record is unsigned are fetched and checked again too.
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// Name a single local image gets in the repository (REGISTRY/REPO:TAG).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Print a JSON summary on stdout (layers fetched/reused, bytes, files, time, disk).
    #[arg(long)]
    json: bool,
    /// Also write a thin image per image into DIR: a docker archive whose only file is
    /// thin.json, pointing at the layers by cvmfs:// URL (`podman load -i` takes it).
    #[arg(long, value_name = "DIR")]
    thin: Option<PathBuf>,
    /// The CVMFS repository name in thin images' URLs (default: the recipe's
    /// cvmfs_repo, else the repository directory's name).
    #[arg(long, value_name = "NAME")]
    cvmfs_repo: Option<String>,
    /// Seconds without a byte of a blob before the download counts as stalled.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    timeout: u64,
    /// Retries of a transient registry failure (connection error, HTTP 5xx or 429, a
    /// stalled or cut-off blob), with doubling waits from 1 s (a 429's Retry-After wins).
    #[arg(long, default_value_t = 3, value_name = "N")]
    retries: u32,
    /// Convert on a private overlay of the CernVM-FS stratum-0 repository REPO on this machine
    /// (as root), then publish what changed in one ingest, whiteouts included (nothing on
    /// any failure); --repo must be in /cvmfs/REPO.
    #[arg(long, value_name = "cvmfs:REPO")]
    publish: Option<String>,
    /// Images to convert.
    #[arg(value_name = "IMAGE")]
    images: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// The repository the image is in.
    #[arg(long, value_name = "DIR", required_unless_present = "thin")]
    repo: Option<PathBuf>,
    /// Mount what a thin image's thin.json points to instead (no IMAGE then).
    #[arg(long, value_name = "FILE", conflicts_with = "repo")]
    thin: Option<PathBuf>,
    /// Where cvmfs:// URLs of a thin image resolve: cvmfs://REPO/PATH is ROOT/REPO/PATH.
    #[arg(long, value_name = "ROOT", default_value = "/cvmfs")]
    cvmfs_root: PathBuf,
    /// Writable layer (needs --work on the same filesystem).
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
    /// More mount options, as for the mount form (allow_other, xattr_permissions=2, ...).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Check every layer against its record, which must be signed by this Ed25519 public key
    /// (PEM; repeatable: any one of them). The same as -o verify_trust=KEY.
    #[arg(long, value_name = "KEY")]
    trust: Vec<PathBuf>,
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Record each file first read (path, layer, bytes, time since mount) in FILE, written
    /// at unmount; summarise it with `stratafs report FILE`.
    #[arg(long, value_name = "FILE")]
    access_log: Option<PathBuf>,
    /// Do not read ahead the files of the image's trace (the same as -o prefetch=off).
    #[arg(long)]
    no_prefetch: bool,
    /// IMAGE (REGISTRY/REPO:TAG as `stratafs images` lists it, or a digest prefix) and
    /// MOUNTPOINT; with --thin only MOUNTPOINT.
    #[arg(value_name = "[IMAGE] MOUNTPOINT", num_args = 1..=2, required = true)]
    paths: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[arg(value_name = "FILE")]
    log: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The repository to keep the trace in (.traces/<xx>/<config digest>.json).
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// The image the log is of (by default: the one whose layers the logged mount stacked).
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// An access log (`mount --access-log`, `-o access_log=`).
    #[arg(value_name = "LOG")]
    log: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// Only list what would be removed.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// Images to remove, as `stratafs images` lists them (or a reference that names one).
    #[arg(value_name = "NAME", required = true)]
    names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// Serve at http://HOST:PORT/metrics until stopped, instead of printing once.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Only the mounts made with -o metrics_group=NAME.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: PathBuf,
    /// The binary to serve the mount from now on (default: this one).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
}

pub fn run(c: Commands) -> Result<(), Error> {
    match c.cmd {
        Cmd::Status(a) => {
            print!("{}", crate::mount::keeper::status(&a.mountpoint)?);
            Ok(())
        }
        Cmd::Metrics(a) => run_metrics(a),
        Cmd::Upgrade(a) => {
            let binary = match a.binary {
                Some(b) => b,
                None => std::env::current_exe()
                    .map_err(|e| crate::mount::Error::Daemon(format!("/proc/self/exe: {e}")))?,
            };
            let s = crate::mount::keeper::upgrade(&a.mountpoint, &binary)?;
            print!("{s}");
            Ok(())
        }
        Cmd::Convert(a) => run_convert(a),
        Cmd::Images(a) => run_images(a),
        Cmd::Mount(a) => run_mount(a),
        Cmd::Report(a) => run_report(a),
        Cmd::Trace(a) => run_trace(a),
        Cmd::Gc(a) => run_gc(a),
        Cmd::Rmi(a) => run_rmi(a),
        #[cfg(feature = "snapshotter")]
        Cmd::Snapshotter(a) => run_snapshotter(a),
    }
}

fn run_metrics(MetricsArgs { listen, group }: MetricsArgs) -> Result<(), Error> {
    use crate::mount::metrics;
    let body = move || {
        let want = |st: &crate::mount::keeper::Status| group.is_none() || st.group == group;
        metrics::encode(metrics::mount_families(&metrics::node_mounts(want)))
    };
    let Some(addr) = listen else {
        print!("{}", body());
        return Ok(());
    };
    let addr = crate::mount::options::metrics_address("--listen", &addr)?;
    let listener = metrics::http::bind("--listen", addr)?;
    info!(address = %addr, "serving the metrics of this node's mounts at /metrics");
    metrics::http::serve(listener, body);
    loop {
        std::thread::park();
    }
}

#[cfg(feature = "snapshotter")]
fn run_snapshotter(a: SnapshotterArgs) -> Result<(), Error> {
    use crate::snapshotter::{self, Config};
    let file = match &a.config {
        Some(p) => Config::read(p)?,
        None => Config::default(),
    };
    let need = |v: Option<PathBuf>, opt: &str, key: &str| {
        v.ok_or_else(|| Error::Usage(format!("snapshotter: give --{opt} (or {key} in --config)")))
    };
    let repo = need(a.repo.or(file.repository), "repo", "repository")?;
    let root = need(a.root.or(file.root), "root", "root")?;
    let address = need(a.address.or(file.address), "address", "address")?;
    let mount_options = if a.mount_options.is_empty() {
        file.mount_options
    } else {
        a.mount_options
    };
    for o in &mount_options {
        check_root_option(o)?;
    }
    // Bound first: a bad address is the one line, before anything is set up.
    let listener = match a.metrics_address.or(file.metrics_address) {
        Some(addr) => {
            let addr = crate::mount::options::metrics_address("--metrics-address", &addr)?;
            Some(crate::mount::metrics::http::bind(
                "--metrics-address",
                addr,
            )?)
        }
        None => None,
    };
    let serve = listener.map(|l| -> Box<dyn FnOnce(snapshotter::Metrics)> {
        Box::new(move |m: snapshotter::Metrics| {
            use crate::mount::metrics;
            if let Ok(a) = l.local_addr() {
                info!(address = %a, "serving metrics at /metrics");
            }
            metrics::http::serve(l, move || {
                let mine =
                    |st: &crate::mount::keeper::Status| st.group.as_deref() == Some(&m.group);
                let mut families = (m.families)();
                families.extend(metrics::mount_families(&metrics::node_mounts(mine)));
                metrics::encode(families)
            });
        })
    });
    Ok(snapshotter::run(
        &repo,
        &root,
        &address,
        mount_options,
        serve,
    )?)
}

/// A snapshotter's `--mount-option`: one that a mount accepts, and not one of the stack's own.
#[cfg(feature = "snapshotter")]
fn check_root_option(o: &str) -> Result<(), Error> {
    let name = o.split('=').next().unwrap_or("");
    let own = [
        "lowerdir",
        "upperdir",
        "workdir",
        "ro",
        "rw",
        "metrics_group",
    ];
    if own.contains(&name) || o.contains(',') {
        return Err(Error::Usage(format!(
            "snapshotter: --mount-option {o}: the snapshotter sets the stack's options itself; give one option without commas"
        )));
    }
    crate::mount::options::MountOptions::parse(&[&format!(
        "lowerdir=/,{}",
        o.replace("{id}", "0")
    )])
    .map_err(|e| Error::Usage(format!("snapshotter: --mount-option {o}: {e}")))?;
    Ok(())
}

fn run_convert(
    ConvertArgs {
        repo,
        recipe,
        platform,
        jobs,
        max_layer_size,
        repair,
        sign,
        name,
        json,
        thin,
        cvmfs_repo,
        timeout,
        retries,
        publish,
        images,
    }: ConvertArgs,
) -> Result<(), Error> {
    network(timeout, retries)?;
    let platform = Platform::parse(&platform)?;
    let Wanted {
        sources,
        format,
        recipe_repo,
    } = Wanted::gather(&images, recipe.as_deref())?;
    let name = name
        .map(|n| {
            ImageName::parse_bare(&n, false).map_err(|reason| ImageError::BadReference {
                reference: n.clone(),
                reason: format!("option --name: {reason}"),
            })
        })
        .transpose()?;
    if name.is_some() && sources.len() != 1 {
        return Err(Error::Usage("option --name needs exactly one IMAGE".into()));
    }
    let sign = sign
        .map(|k| crate::stack::trust::SigningKey::load(&k))
        .transpose()
        .map_err(|e| Error::Usage(format!("option --sign: {e}")))?
        .map(std::sync::Arc::new);
    let publish = publish.map(|p| publish::Target::parse(&p)).transpose()?;
    if let Some(t) = &publish {
        t.check_dir(&repo)?;
        // The first run stages: it runs this same command line again on a private overlay
        // of the published tree, and publishes what that run changed.
        if std::env::var_os(publish::STAGED_ENV).as_deref() != Some(t.fqrn.as_ref()) {
            return publish_staged(t);
        }
    }
    // A run that fails before converting anything into a repository it created leaves none.
    let fresh = !repo.exists();
    let repo = Repo::open(&repo)?;
    let converted = (|| -> Result<_, Error> {
        let sources = convert::expand(sources)?;
        let thin = thin.map(|dir| convert::ThinOutput {
            dir,
            cvmfs_repo: cvmfs_repo.or(recipe_repo).unwrap_or_else(|| {
                repo.root
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }),
            format,
        });
        let opts = Options {
            platform,
            jobs,
            name,
            measure_disk: json,
            thin,
            max_layer_size,
            repair,
            sign,
        };
        Ok(convert::convert(&repo, &sources, &opts)?)
    })();
    let s = match converted {
        Ok(s) => s,
        Err(e) => {
            if fresh && repo.images().is_ok_and(|i| i.is_empty()) {
                let root = repo.root.clone();
                drop(repo);
                let _ = std::fs::remove_dir_all(&root);
            }
            return Err(e);
        }
    };
    converted_into(&repo, &s, repair)?;
    if publish.is_some() {
        repo.close_clean()?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).expect("serialisable")
        );
    }
    Ok(())
}

/// `--timeout` and `--retries`, for every registry the run talks to.
fn network(timeout: u64, retries: u32) -> Result<(), Error> {
    if timeout == 0 {
        return Err(Error::Usage(
            "option --timeout: must be at least 1 second".into(),
        ));
    }
    crate::image::registry::configure(crate::image::registry::Network {
        idle_timeout: std::time::Duration::from_secs(timeout),
        retries,
        ..Default::default()
    });
    Ok(())
}

/// What `convert` is asked for: its images, from the arguments and the recipe, and the
/// recipe's settings for thin images.
struct Wanted {
    sources: Vec<Source>,
    format: String,
    recipe_repo: Option<String>,
}

impl Wanted {
    fn gather(images: &[String], recipe: Option<&std::path::Path>) -> Result<Wanted, Error> {
        let mut w = Wanted {
            sources: images
                .iter()
                .map(|i| Source::parse(i))
                .collect::<Result<_, _>>()?,
            format: "$(registry)/$(repository)_thin:$(tag)".to_string(),
            recipe_repo: None,
        };
        if let Some(r) = recipe {
            let rec = Recipe::load(r)?;
            w.sources.extend(rec.sources(r)?);
            if let Some(f) = rec.output_format.clone() {
                w.format = f;
            }
            w.recipe_repo = rec.cvmfs_repo.clone();
        }
        if w.sources.is_empty() {
            return Err(Error::Usage(
                "nothing to convert: give IMAGE arguments or --recipe".into(),
            ));
        }
        Ok(w)
    }
}

/// After a convert: the podman store written again, layers `--repair` found without a record
/// named, the summary logged.
fn converted_into(repo: &Repo, s: &convert::Summary, repair: bool) -> Result<(), Error> {
    let n = crate::image::podman_store::write(repo)?;
    info!(images = n, "podmanStore updated");
    if repair {
        for l in repo.layers_without_record()? {
            warn!(layer = %l.display(), "no record: no image given holds this layer; verify=on mounts refuse it");
        }
    }
    info!("{}", convert::describe(s));
    Ok(())
}

/// `convert --publish`: the convert staged, then its changes ingested.
fn publish_staged(target: &publish::Target) -> Result<(), Error> {
    let stage = publish::Stage::begin(target)?;
    let exe = std::env::current_exe().map_err(|e| crate::image::Error::io("/proc/self/exe", e))?;
    let status = stage
        .command(&exe)?
        .status()
        .map_err(|e| crate::image::Error::Publish {
            target: format!("cvmfs:{}", target.fqrn),
            reason: format!("cannot start the convert on a private overlay: {e}"),
        })?;
    if !status.success() {
        // It said why on stderr.
        return Err(Error::Reported(status.code().unwrap_or(1)));
    }
    Ok(stage.publish()?)
}

fn run_images(ImagesArgs { repo }: ImagesArgs) -> Result<(), Error> {
    let repo = Repo::read(&repo)?;
    // UNPACKED: the layers' unpacked size as recorded at conversion ("-" where a layer has no
    // record); never the compressed size of a registry's blobs, which is another measure.
    println!(
        "{:<50} {:<19} {:>6} {:>10}",
        "IMAGE", "CONFIG", "LAYERS", "UNPACKED"
    );
    for i in repo.images()? {
        let size: Option<u64> = i
            .manifest
            .layers
            .iter()
            .map(|l| repo.layer_size(&l.digest))
            .sum();
        println!(
            "{:<50} {:<19} {:>6} {:>10}",
            i.name,
            format!("sha256:{}", &i.manifest.config.digest.hex()[..12]),
            i.manifest.layers.len(),
            size.map_or_else(|| "-".to_string(), human)
        );
    }
    Ok(())
}

/// With keys to trust, which layers make the image is what a trusted key signed: the
/// manifest's signature is checked and the layers are taken from the bytes checked.
fn trusted_manifest(
    repo: &Repo,
    name: &str,
    bytes: &[u8],
    keys: &[PathBuf],
) -> Result<crate::image::manifest::Manifest, Error> {
    let keys = crate::stack::trust::TrustedKeys::load(keys)
        .map_err(|e| Error::Usage(format!("option verify_trust: {e}")))?;
    let refuse = |reason: String| ImageError::Repo {
        path: repo.root.clone(),
        reason: format!("image {name}: {reason}"),
    };
    keys.check_manifest(bytes, &repo.manifest_sig_at(name))
        .map_err(|e| refuse(format!("manifest {e}")))?;
    Ok(serde_json::from_slice(bytes).map_err(|e| refuse(format!("manifest: {e}")))?)
}

fn run_mount(
    MountArgs {
        repo,
        thin,
        cvmfs_root,
        upper,
        work,
        options,
        trust,
        foreground,
        access_log,
        no_prefetch,
        paths,
    }: MountArgs,
) -> Result<(), Error> {
    let usage = |why: &str| Error::Usage(format!("stratafs mount: {why}"));
    let mut opts = MountOptions::parse_extra(&options)?;
    if !trust.is_empty() {
        opts.verify = true;
        opts.verify_trust.extend(trust);
    }
    let (dirs, what, mountpoint, trace) = match (&repo, &thin, paths.as_slice()) {
        (Some(repo), None, [image, mnt]) => {
            let repo = Repo::read(repo)?;
            let (mut img, bytes) = repo.find_image(image)?;
            if !opts.verify_trust.is_empty() {
                img.manifest = trusted_manifest(&repo, &img.name, &bytes, &opts.verify_trust)?;
            }
            let trace =
                crate::image::trace::find_for_config(&repo, img.manifest.config.digest.hex());
            let mut dirs = Vec::new();
            for l in img.manifest.layers.iter().rev() {
                let p = repo.layerfs(&l.digest);
                if !p.is_dir() {
                    return Err(ImageError::Repo {
                        path: repo.root.clone(),
                        reason: format!("image {}: layer {} is missing", img.name, l.digest),
                    }
                    .into());
                }
                dirs.push(p);
            }
            (dirs, img.name, PathBuf::from(mnt), trace)
        }
        (None, Some(t), [mnt]) => {
            let dirs = crate::image::thin::Thin::load(t)?.lowerdirs(t, &cvmfs_root)?;
            let trace = crate::image::trace::find(&dirs);
            (dirs, t.display().to_string(), PathBuf::from(mnt), trace)
        }
        (Some(_), None, _) => return Err(usage("give IMAGE and MOUNTPOINT")),
        (None, Some(_), _) => return Err(usage("with --thin give only MOUNTPOINT")),
        _ => return Err(usage("give --repo DIR IMAGE or --thin FILE")),
    };
    opts.upperdir = upper;
    opts.workdir = work;
    if access_log.is_some() {
        opts.access_log = access_log;
    }
    if no_prefetch {
        opts.prefetch = crate::mount::options::Prefetch::Off;
    }
    // A mountpoint that cannot be used is the one line printed, with no log line before it.
    // (A keeper's server finds it mounted, by its keeper, and must not look: nobody answers.)
    if !crate::mount::keeper::is_server() {
        crate::mount::run::check_mountpoint(&mountpoint)?;
        info!(image = %what, layers = dirs.len(), "mounting");
    }
    let plan = MountPlan::new(opts, Some(dirs), mountpoint)?
        .foreground(foreground)
        .with_found_trace(trace);
    Ok(crate::mount::run::run(&plan)?)
}

fn run_report(ReportArgs { log }: ReportArgs) -> Result<(), Error> {
    print!("{}", crate::mount::report::report(&log)?);
    Ok(())
}

fn run_trace(TraceArgs { repo, image, log }: TraceArgs) -> Result<(), Error> {
    let repo = Repo::read(&repo)?;
    let (dest, n) = crate::image::trace::save_from_log(&repo, &log, image.as_deref())?;
    info!(trace = %dest.display(), files = n, "trace saved");
    Ok(())
}

fn run_rmi(RmiArgs { repo, names }: RmiArgs) -> Result<(), Error> {
    let repo = Repo::open(&repo)?;
    for n in &names {
        let name = repo.remove_image(n)?;
        println!("removed {name}");
    }
    crate::image::podman_store::write(&repo)?;
    Ok(())
}

fn run_gc(GcArgs { repo, dry_run }: GcArgs) -> Result<(), Error> {
    let repo = Repo::open(&repo)?;
    let removed = repo.gc(dry_run)?;
    for p in &removed {
        let rel = p.strip_prefix(&repo.root).unwrap_or(p);
        if dry_run {
            println!("would remove {}", rel.display());
        } else {
            println!("removed {}", rel.display());
        }
    }
    if !dry_run {
        crate::image::podman_store::write(&repo)?;
    }
    info!(count = removed.len(), dry_run, "gc done");
    Ok(())
}

/// `1048576`, `512K`, `10M`, `64G`, `1T`.
fn parse_size(s: &str) -> Result<u64, String> {
    let (num, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("'{s}': expected bytes or a K, M, G or T suffix")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{s}': expected bytes or a K, M, G or T suffix"))
}

fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
