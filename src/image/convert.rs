//! `stratafs convert`: images into the repository layout. Per image: resolve the manifest,
//! fetch and unpack the missing layers in parallel (bounded, one streamed pass each), put them
//! in place bottom to top, build the flat root, then the public link, and the manifest last.

use std::collections::HashSet;
use std::io::{self, IsTerminal, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use tracing::{info, warn};

use crate::image::Error as ImageError;
use crate::image::digest::Digest;
use crate::image::flat::FlatBuilder;
use crate::image::manifest::{Descriptor, ImageConfig, Platform};
use crate::image::records::{record_ok, tree_matches, write_flat_record, write_record};
use crate::image::reference::{ImageName, Source};
use crate::image::registry::Registry;
use crate::image::repo::{LayerInfo, Repo, touch};
use crate::image::source::{self, ImageSource, Resolved};
use crate::image::unpack::{self, Target, Unpacked};
use crate::stack::cvmfs::CATALOG_MARKER;
use crate::stack::{Layer, layout, resolve};

pub struct Options {
    pub platform: Platform,
    /// Layers fetched and unpacked at once.
    pub jobs: usize,
    /// Name for a single local image (instead of `localhost/<file name>:<tag>`).
    pub name: Option<ImageName>,
    /// Compute the disk use of each image for the summary.
    pub measure_disk: bool,
    /// Also write a thin image per image.
    pub thin: Option<ThinOutput>,
    /// The most bytes one layer may unpack to.
    pub max_layer_size: u64,
    /// Fetch again, check and replace the layers that have no record (`--repair`).
    pub repair: bool,
    /// Sign each record written (`--sign`).
    pub sign: Option<std::sync::Arc<crate::stack::trust::SigningKey>>,
}

/// The default of `--max-layer-size`: far above any real layer, far below a full disk.
pub const MAX_LAYER_SIZE: u64 = 64 << 30;

/// Where thin images go and how they are named.
pub struct ThinOutput {
    pub dir: PathBuf,
    /// The CVMFS repository name in the `cvmfs://` URLs.
    pub cvmfs_repo: String,
    /// DUCC's `output_format` template for the thin image's name.
    pub format: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub images: Vec<ImageSummary>,
    pub layers_fetched: usize,
    pub layers_reused: usize,
    pub bytes_fetched: u64,
    pub files: u64,
    pub seconds: f64,
    /// Bytes of disk used by the converted images' layers and flat roots (each inode once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_used: Option<u64>,
    /// Sum of the converted images' layer contents (uncompressed tar payload).
    pub content_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ImageSummary {
    pub name: String,
    pub config: String,
    /// "converted", "up to date" or "updated" (the tag moved).
    pub status: &'static str,
    pub layers_fetched: usize,
    pub layers_reused: usize,
}

/// Expand wildcard tags through the registry's tag list (all pages).
pub fn expand(sources: Vec<Source>) -> Result<Vec<Source>, ImageError> {
    let mut out = Vec::new();
    for s in sources {
        match &s {
            Source::Registry(n) if n.is_wildcard() => {
                let mut tags: Vec<String> = Registry::new(n.clone())?
                    .tags()?
                    .into_iter()
                    .filter(|t| n.tag_matches(t))
                    .collect();
                tags.sort();
                info!(image = %n, matched = tags.len(), "wildcard tag resolved");
                for t in &tags {
                    // A registry is not trusted to name things: a tag outside the grammar
                    // (`../x`, `a/b`) would place an image elsewhere in the repository.
                    match n.with_tag(t) {
                        Ok(name) => out.push(Source::Registry(name)),
                        Err(e) => warn!(image = %n, "tag skipped: {e}"),
                    }
                }
            }
            _ => out.push(s),
        }
    }
    Ok(out)
}

pub fn convert(repo: &Repo, sources: &[Source], opts: &Options) -> Result<Summary, ImageError> {
    let start = Instant::now();
    let mut summary = Summary::default();
    let progress = io::stderr().is_terminal().then(MultiProgress::new);
    let mut seen_inodes = HashSet::new();
    for src in sources {
        let s = source::open(src, opts.name.as_ref())?;
        let resolved = s.resolve(&opts.platform)?;
        let img = convert_one(
            repo,
            s.as_ref(),
            &resolved,
            opts,
            progress.as_ref(),
            &mut summary,
        )?;
        if let Some(t) = &opts.thin {
            write_thin(t, src, &resolved)?;
        }
        if opts.measure_disk {
            let mut roots: Vec<PathBuf> = resolved
                .manifest
                .layers
                .iter()
                .map(|l| repo.layer_dir(&l.digest))
                .collect();
            roots.push(repo.flat_dir(&resolved.manifest.config.digest));
            let used =
                disk_used(&roots, &mut seen_inodes).map_err(|e| ImageError::io(&repo.root, e))?;
            *summary.disk_used.get_or_insert(0) += used;
        }
        summary.images.push(img);
    }
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Convert one opened source (a registry, a layout, an archive, or one in memory) into
/// `repo`.
pub fn convert_source(
    repo: &Repo,
    src: &dyn ImageSource,
    opts: &Options,
    summary: &mut Summary,
) -> Result<ImageSummary, ImageError> {
    let resolved = src.resolve(&opts.platform)?;
    convert_one(repo, src, &resolved, opts, None, summary)
}

fn convert_one(
    repo: &Repo,
    src: &dyn ImageSource,
    r: &Resolved,
    opts: &Options,
    progress: Option<&MultiProgress>,
    summary: &mut Summary,
) -> Result<ImageSummary, ImageError> {
    let image = r.name.to_string();
    let cfg = &r.manifest.config.digest;
    let config = parse_config(&image, r)?;
    let layers = &r.manifest.layers;
    let standing = Standing::assess(repo, r, opts);
    if standing.same_image && standing.complete(repo, layers) {
        return up_to_date(repo, r, summary);
    }
    let unique = standing.to_fetch(repo, layers);
    info!(
        image,
        layers = layers.len(),
        fetch = unique.len(),
        "converting"
    );
    let job = LayerJob {
        repo,
        src,
        image: &image,
        config: &config,
        privileged: rustix::process::geteuid().is_root(),
        progress,
        max_size: opts.max_layer_size,
    };
    let fetched = fetch_layers(&job, layers, &unique, opts.jobs)?;
    place_layers(repo, &image, layers, fetched, opts.sign.as_deref(), summary)?;
    // A layer fetched again by --repair leaves the flat root's hard links on the old files.
    if !standing.flat_ok || (opts.repair && !unique.is_empty()) {
        build_flat(
            repo,
            &image,
            layers,
            &config,
            cfg,
            &standing.flat_record,
            opts,
        )?;
    }
    let status = name_image(repo, r, &standing, opts)?;
    summary.layers_fetched += unique.len();
    summary.layers_reused += layers.len() - unique.len();
    info!(image, config = %cfg, status, "done");
    Ok(ImageSummary {
        name: image,
        config: cfg.to_string(),
        status,
        layers_fetched: unique.len(),
        layers_reused: layers.len() - unique.len(),
    })
}

/// The image's config, with as many diff IDs as the manifest has layers.
fn parse_config(image: &str, r: &Resolved) -> Result<ImageConfig, ImageError> {
    let config = ImageConfig::parse(&format!("{image} config"), &r.config_bytes)?;
    let layers = r.manifest.layers.len();
    if let Some(d) = config.rootfs.as_ref().map(|f| f.diff_ids.len()) {
        if d != layers {
            return Err(ImageError::format(
                format!("{image} config"),
                format!("{d} diff_ids for {layers} layers"),
            ));
        }
    }
    Ok(config)
}

/// What the repository already holds of an image, and whether it is in order.
struct Standing {
    /// The manifest the image's name pointed at before this run.
    old: Option<Vec<u8>>,
    /// The same image, whoever wrote its manifest (DUCC re-serialises it with other keys).
    same_image: bool,
    /// Under --repair, the layers whose record reads (and is signed by --sign's key) and
    /// whose directory holds exactly what the record says, every byte hashed. A layer
    /// without a record (converted before records existed, or whose record went) is not in
    /// order: it is fetched, checked and put in place again.
    in_order: Option<HashSet<Digest>>,
    flat_ok: bool,
    /// With --sign, an image whose manifest that key did not sign is converted again (its
    /// layers and flat root are kept if they are in order).
    manifest_ok: bool,
    flat_record: PathBuf,
}

impl Standing {
    fn assess(repo: &Repo, r: &Resolved, opts: &Options) -> Standing {
        let cfg = &r.manifest.config.digest;
        let layers = &r.manifest.layers;
        let old = repo.manifest_of(&r.name);
        let same_image = old.as_deref().is_some_and(|o| {
            serde_json::from_slice::<crate::image::manifest::Manifest>(o).is_ok_and(|m| {
                m.config.digest == *cfg
                    && m.layers
                        .iter()
                        .map(|l| &l.digest)
                        .eq(layers.iter().map(|l| &l.digest))
            })
        });
        let sign = opts.sign.as_deref();
        let in_order = opts.repair.then(|| {
            layers
                .iter()
                .map(|l| &l.digest)
                .filter(|d| {
                    let file = layout::record_file(&repo.layer_dir(d));
                    repo.has_layer(d)
                        && record_ok(&file, sign)
                        && tree_matches(&repo.layerfs(d), &file)
                })
                .cloned()
                .collect()
        });
        let flat_record = layout::flat_record_file(&repo.root, cfg.hex());
        let flat_ok = repo.has_flat(cfg)
            && (!opts.repair
                || (record_ok(&flat_record, sign)
                    && tree_matches(&repo.flat_dir(cfg), &flat_record)));
        let manifest_ok = sign.is_none_or(|k| {
            crate::stack::trust::TrustedKeys::from_raw(vec![k.public()])
                .check_manifest(&r.manifest_bytes, &repo.manifest_sig_file(&r.name))
                .is_ok()
        });
        Standing {
            old,
            same_image,
            in_order,
            flat_ok,
            manifest_ok,
            flat_record,
        }
    }

    fn present(&self, repo: &Repo, d: &Digest) -> bool {
        repo.has_layer(d) && self.in_order.as_ref().is_none_or(|o| o.contains(d))
    }

    fn complete(&self, repo: &Repo, layers: &[Descriptor]) -> bool {
        self.flat_ok && self.manifest_ok && layers.iter().all(|l| self.present(repo, &l.digest))
    }

    /// The indexes of the layers to fetch: each missing blob once (two entries of one
    /// manifest may name the same blob).
    fn to_fetch(&self, repo: &Repo, layers: &[Descriptor]) -> Vec<usize> {
        let mut names = HashSet::new();
        (0..layers.len())
            .filter(|&i| !self.present(repo, &layers[i].digest))
            .filter(|&i| names.insert(layers[i].digest.clone()))
            .collect()
    }
}

/// Everything is in place: the name is linked (and its config written if it went).
fn up_to_date(
    repo: &Repo,
    r: &Resolved,
    summary: &mut Summary,
) -> Result<ImageSummary, ImageError> {
    let image = r.name.to_string();
    let layers = r.manifest.layers.len();
    repo.link(&r.name, &r.manifest.config.digest)?;
    if repo.config_of(&r.name.metadata_path()).is_none() {
        repo.write_config(&r.name, &r.config_bytes)?;
    }
    info!(image, "up to date, nothing to do");
    summary.layers_reused += layers;
    Ok(ImageSummary {
        name: image,
        config: r.manifest.config.digest.to_string(),
        status: "up to date",
        layers_fetched: 0,
        layers_reused: layers,
    })
}

/// Fetched layers into place, bottom to top: their deferred hard links made (a link may
/// need any layer below it), their records written, then each renamed into the repository.
fn place_layers(
    repo: &Repo,
    image: &str,
    layers: &[Descriptor],
    mut done: Vec<(usize, PathBuf, Unpacked)>,
    sign: Option<&crate::stack::trust::SigningKey>,
    summary: &mut Summary,
) -> Result<(), ImageError> {
    done.sort_by_key(|(i, _, _)| *i);
    let lower_path = |j: usize, done: &[(usize, PathBuf, Unpacked)]| -> PathBuf {
        done.iter()
            .find(|(k, _, _)| layers[*k].digest == layers[j].digest)
            .map(|(_, p, _)| p.join(layout::LAYERFS))
            .unwrap_or_else(|| repo.layerfs(&layers[j].digest))
    };
    let in_layer = |i: usize| layers[i].digest.to_string();
    for (i, tmp, u) in &done {
        for (link, target) in &u.deferred_links {
            let lowers: Vec<PathBuf> = (0..*i).rev().map(|j| lower_path(j, &done)).collect();
            materialise_link(&tmp.join(layout::LAYERFS), link, target, &lowers).map_err(|e| {
                ImageError::UnsafeEntry {
                    image: image.to_string(),
                    layer: in_layer(*i),
                    entry: String::from_utf8_lossy(link).into_owned(),
                    reason: e.to_string(),
                }
            })?;
        }
    }
    for (i, tmp, u) in &done {
        write_record(tmp, u, sign).map_err(|e| ImageError::Layer {
            image: image.to_string(),
            layer: in_layer(*i),
            source: Box::new(e),
        })?;
    }
    for (i, tmp, u) in &done {
        summary.bytes_fetched += u.compressed_size;
        summary.files += u.files;
        summary.content_bytes += u.diff_size;
        repo.install_layer(&layers[*i].digest, tmp)?;
    }
    Ok(())
}

/// The flat root of the image, built from its layers in the repository, with its record.
fn build_flat(
    repo: &Repo,
    image: &str,
    layers: &[Descriptor],
    config: &ImageConfig,
    cfg: &Digest,
    record: &Path,
    opts: &Options,
) -> Result<(), ImageError> {
    let tmp = repo.temp_dir("flat")?;
    let paths: Vec<PathBuf> = layers.iter().map(|l| repo.layerfs(&l.digest)).collect();
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let in_flat = |e: ImageError| ImageError::Layer {
        image: image.to_string(),
        layer: "flat root".into(),
        source: Box::new(e),
    };
    FlatBuilder::build(&refs, &tmp, config).map_err(|e| in_flat(ImageError::io(&tmp, e)))?;
    touch(&tmp.join(CATALOG_MARKER))?;
    write_flat_record(&tmp, &paths, cfg, record, opts.sign.as_deref()).map_err(in_flat)?;
    repo.install_flat(cfg, &tmp)
}

/// The image's names last, once its layers and flat root are in place: origins, the public
/// link, config, manifest (and its signature). Returns the image's status.
fn name_image(
    repo: &Repo,
    r: &Resolved,
    standing: &Standing,
    opts: &Options,
) -> Result<&'static str, ImageError> {
    let cfg = &r.manifest.config.digest;
    for l in &r.manifest.layers {
        repo.add_origin(&l.digest, cfg)?;
    }
    let status = match &standing.old {
        Some(o) if !standing.same_image => {
            repo.schedule_removal(&r.name, o)?;
            "updated"
        }
        _ => "converted",
    };
    repo.link(&r.name, cfg)?;
    repo.write_config(&r.name, &r.config_bytes)?;
    repo.write_manifest(&r.name, &r.manifest_bytes)?;
    if let Some(key) = &opts.sign {
        crate::image::repo::write_atomic(
            &repo.manifest_sig_file(&r.name),
            key.sign_manifest(&r.manifest_bytes).as_bytes(),
        )?;
    }
    Ok(status)
}

/// What every layer fetch of one image shares.
struct LayerJob<'a> {
    repo: &'a Repo,
    src: &'a dyn ImageSource,
    image: &'a str,
    config: &'a ImageConfig,
    /// Owners and devices as the tar says (root), or recorded in the override xattr.
    privileged: bool,
    progress: Option<&'a MultiProgress>,
    max_size: u64,
}

/// Fetch and unpack the layers `which` on `jobs` threads, each into a temp dir holding
/// `layerfs/` and `.metadata/layers.json`, digests checked.
fn fetch_layers(
    job: &LayerJob<'_>,
    layers: &[Descriptor],
    which: &[usize],
    jobs: usize,
) -> Result<Vec<(usize, PathBuf, Unpacked)>, ImageError> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for &i in which {
        tx.send(i).expect("receiver alive");
    }
    drop(tx);
    let results = Mutex::new(Vec::new());
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(which.len().max(1)) {
            s.spawn(|| {
                while let Ok(i) = rx.recv() {
                    if first_error.lock().unwrap().is_some() {
                        return;
                    }
                    match fetch_retrying(job, &layers[i], i) {
                        Ok((tmp, u)) => results.lock().unwrap().push((i, tmp, u)),
                        Err(e) => {
                            first_error.lock().unwrap().get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    if let Some(e) = first_error.into_inner().unwrap() {
        // Layers that did arrive are not installed without their image: do not leave them.
        for (_, tmp, _) in &results {
            let _ = std::fs::remove_dir_all(tmp);
        }
        return Err(e);
    }
    Ok(results)
}

/// `fetch_one`, again from the start when the blob failed in transit (stalled, cut off):
/// the partial layer is removed first, and the last failure names the blob.
fn fetch_retrying(
    job: &LayerJob<'_>,
    desc: &Descriptor,
    index: usize,
) -> Result<(PathBuf, Unpacked), ImageError> {
    let (src, image) = (job.src, job.image);
    let net = crate::image::registry::network();
    let mut wait = net.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let e = match fetch_one(job, desc, index) {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        let Some(why) = src.transfer_failure(&desc.digest) else {
            return Err(e);
        };
        if attempt > net.retries {
            return Err(ImageError::Transfer {
                what: format!("{image}: blob {}", desc.digest),
                reason: why,
                attempts: attempt,
            });
        }
        warn!(image, blob = %desc.digest, attempt, "{why}: fetching the layer again in {:.1} s", wait.as_secs_f64());
        std::thread::sleep(wait);
        wait = wait.saturating_mul(2);
    }
}

/// Fetch and unpack one layer into a temporary directory of the repository, removed again
/// if anything fails (a killed run's leftovers go at the next run).
fn fetch_one(
    job: &LayerJob<'_>,
    desc: &Descriptor,
    index: usize,
) -> Result<(PathBuf, Unpacked), ImageError> {
    let tmp = job.repo.temp_dir("layer")?;
    let r = fetch_into(job, &tmp, desc, index);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r.map(|u| (tmp, u))
}

fn fetch_into(
    job: &LayerJob<'_>,
    tmp: &Path,
    desc: &Descriptor,
    index: usize,
) -> Result<Unpacked, ImageError> {
    let (src, image, config, privileged, progress) =
        (job.src, job.image, job.config, job.privileged, job.progress);
    let layer = desc.digest.to_string();
    let fs_dir = tmp.join(layout::LAYERFS);
    std::fs::create_dir(&fs_dir).map_err(|e| ImageError::io(&fs_dir, e))?;
    let bar = progress.map(|m| {
        let b = m.add(ProgressBar::new(desc.size));
        b.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b.set_prefix(desc.digest.hex()[..12].to_string());
        b
    });
    let reader = src.blob(desc)?;
    let reader: Box<dyn Read + Send> = match &bar {
        Some(b) => Box::new(b.wrap_read(reader)),
        None => reader,
    };
    let t = Target {
        image,
        layer: &layer,
        privileged,
        max_size: job.max_size,
    };
    let u = unpack::unpack(reader, &fs_dir, &t)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let in_layer = |e: ImageError| ImageError::Layer {
        image: image.to_string(),
        layer: layer.clone(),
        source: Box::new(e),
    };
    let found = u.compressed_digest.clone().expect("set by unpack");
    if found != desc.digest {
        return Err(in_layer(ImageError::DigestMismatch {
            what: "blob".into(),
            expected: desc.digest.to_string(),
            found: found.to_string(),
        }));
    }
    if desc.size != 0 && u.compressed_size != desc.size {
        return Err(in_layer(ImageError::SizeMismatch {
            what: "blob".into(),
            expected: desc.size,
            found: u.compressed_size,
        }));
    }
    let diff_id = u.diff_id.clone().expect("set by unpack");
    if let Some(want) = config.rootfs.as_ref().and_then(|r| r.diff_ids.get(index)) {
        if *want != diff_id {
            return Err(in_layer(ImageError::DigestMismatch {
                what: "uncompressed layer (diff_id)".into(),
                expected: want.to_string(),
                found: diff_id.to_string(),
            }));
        }
    }
    touch(&fs_dir.join(CATALOG_MARKER))?;
    let meta = tmp.join(layout::METADATA);
    std::fs::create_dir(&meta).map_err(|e| ImageError::io(&meta, e))?;
    let info = vec![LayerInfo {
        id: diff_id.hex().to_string(),
        created: config.created.clone(),
        compressed_diff_digest: desc.digest.to_string(),
        diff_digest: diff_id.to_string(),
        diff_size: u.diff_size,
    }];
    crate::image::repo::write_atomic(
        &meta.join("layers.json"),
        &serde_json::to_vec(&info).expect("serialisable"),
    )?;
    info!(
        image,
        layer,
        files = u.files,
        bytes = u.compressed_size,
        "layer unpacked"
    );
    Ok(u)
}

/// Why a hard link to a lower layer's file could not be made.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("hard link to '{0}', which neither this layer nor a lower one has")]
    Missing(String),
    #[error("hard link to a directory")]
    Directory,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("linking from a lower layer: {0}")]
    Link(io::Error),
}

/// A hard link whose target a lower layer holds: link to (or, across filesystems, copy) the
/// file that is visible at `target` below this layer, by the stack's own resolution rules.
fn materialise_link(
    layerfs: &Path,
    link: &[u8],
    target: &[u8],
    lowers_top_first: &[PathBuf],
) -> Result<(), LinkError> {
    let stack: Vec<Layer> = lowers_top_first
        .iter()
        .enumerate()
        .map(|(i, p)| Layer::open(i, p).map_err(|e| io::Error::other(e.to_string())))
        .collect::<Result<_, _>>()?;
    let (holders, st) = resolve::path(&stack, target)?
        .ok_or_else(|| LinkError::Missing(String::from_utf8_lossy(target).into_owned()))?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        return Err(LinkError::Directory);
    }
    let (tparent, tname) = match target.iter().rposition(|&b| b == b'/') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (&b""[..], target),
    };
    let sdir = stack[holders[0] as usize].open_dir(tparent)?;
    let lcomps: Vec<&[u8]> = link.split(|b| *b == b'/').collect();
    let (lname, lparents) = lcomps.split_last().expect("non-empty link");
    let root = rustix::fs::open(
        layerfs,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .map_err(io::Error::from)?;
    let dir = crate::confined::open_beneath(&root, lparents, false)?;
    rustix::fs::linkat(&sdir, tname, &dir, *lname, rustix::fs::AtFlags::empty())
        .map_err(|e| LinkError::Link(e.into()))
}

/// Disk blocks of everything under `roots`, each inode counted once across calls.
fn disk_used(roots: &[PathBuf], seen: &mut HashSet<(u64, u64)>) -> io::Result<u64> {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p)?;
        if seen.insert((md.dev(), md.ino())) {
            total += md.blocks() * 512;
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(total)
}

/// The one-line summary logged at the end (the `--json` form has every field).
pub fn describe(s: &Summary) -> String {
    let up = s.images.iter().filter(|i| i.status == "up to date").count();
    format!(
        "{} image(s): {} converted, {} up to date; layers fetched {}, reused {}; {} bytes fetched; {} files; {:.2} s",
        s.images.len(),
        s.images.len() - up,
        up,
        s.layers_fetched,
        s.layers_reused,
        s.bytes_fetched,
        s.files,
        s.seconds
    )
}

/// The thin image of a converted image, as a docker archive in `t.dir`.
fn write_thin(t: &ThinOutput, src: &Source, r: &Resolved) -> Result<(), ImageError> {
    let n = &r.name;
    let scheme = match src {
        Source::Registry(n) if n.plain_http => "http",
        _ => "https",
    };
    let digest = Digest::of(&r.manifest_bytes).to_string();
    let origin = match src {
        Source::Registry(_) => format!("{scheme}://{n}"),
        _ => n.to_string(),
    };
    let name = crate::image::thin::thin_name(
        &t.format,
        scheme,
        &n.registry,
        &n.repository,
        n.tag.as_deref().unwrap_or(""),
        &digest,
    );
    // A name for podman: no scheme, and a tag (DUCC's template may push to a registry).
    let name = name
        .split_once("://")
        .map_or(name.as_str(), |(_, r)| r)
        .to_string();
    let thin = crate::image::thin::Thin::of(&origin, &t.cvmfs_repo, &r.manifest);
    std::fs::create_dir_all(&t.dir).map_err(|e| ImageError::io(&t.dir, e))?;
    let file = t.dir.join(format!(
        "{}.tar",
        crate::image::reference::sanitize(&name, '_')
    ));
    crate::image::thin::write_archive(&file, &name, &thin)?;
    info!(thin = %file.display(), name, "thin image written");
    Ok(())
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
