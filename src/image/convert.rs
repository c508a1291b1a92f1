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
use crate::image::flat::FlatBuilder;
use crate::image::manifest::{Descriptor, ImageConfig, Platform};
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
    let config = ImageConfig::parse(&format!("{image} config"), &r.config_bytes)?;
    let layers = &r.manifest.layers;
    if let Some(d) = config.rootfs.as_ref().map(|f| f.diff_ids.len()) {
        if d != layers.len() {
            return Err(ImageError::format(
                format!("{image} config"),
                format!("{d} diff_ids for {} layers", layers.len()),
            ));
        }
    }
    let old = repo.manifest_of(&r.name);
    // The same image, whoever wrote its manifest (DUCC re-serialises it with other keys).
    let same_image = old.as_deref().is_some_and(|o| {
        serde_json::from_slice::<crate::image::manifest::Manifest>(o).is_ok_and(|m| {
            m.config.digest == *cfg
                && m.layers
                    .iter()
                    .map(|l| &l.digest)
                    .eq(layers.iter().map(|l| &l.digest))
        })
    });
    // Under --repair a layer without a record (converted before records existed, or whose
    // record went) counts as missing: it is fetched, checked and put in place again.
    let sign = opts.sign.as_deref();
    // Under --repair, a layer is in order when its record reads (and is signed by --sign's
    // key) and the layer holds exactly what the record says, every byte hashed.
    let in_order: HashSet<&crate::image::digest::Digest> = match opts.repair {
        false => HashSet::new(),
        true => layers
            .iter()
            .map(|l| &l.digest)
            .filter(|d| {
                let file = layout::record_file(&repo.layer_dir(d));
                repo.has_layer(d) && record_ok(&file, sign) && tree_matches(&repo.layerfs(d), &file)
            })
            .collect(),
    };
    let present = |d: &crate::image::digest::Digest| {
        repo.has_layer(d) && (!opts.repair || in_order.contains(d))
    };
    let flat_record = layout::flat_record_file(&repo.root, cfg.hex());
    let flat_ok = repo.has_flat(cfg)
        && (!opts.repair
            || (record_ok(&flat_record, sign) && tree_matches(&repo.flat_dir(cfg), &flat_record)));
    // With --sign, an image whose manifest that key did not sign is converted again (its
    // layers and flat root are kept if they are in order).
    let manifest_ok = sign.is_none_or(|k| {
        crate::stack::trust::TrustedKeys::from_raw(vec![k.public()])
            .check_manifest(&r.manifest_bytes, &repo.manifest_sig_file(&r.name))
            .is_ok()
    });
    let complete = flat_ok && manifest_ok && layers.iter().all(|l| present(&l.digest));
    if same_image && complete {
        repo.link(&r.name, cfg)?;
        if repo.config_of(&r.name.metadata_path()).is_none() {
            repo.write_config(&r.name, &r.config_bytes)?;
        }
        info!(image, "up to date, nothing to do");
        summary.layers_reused += layers.len();
        return Ok(ImageSummary {
            name: image,
            config: cfg.to_string(),
            status: "up to date",
            layers_fetched: 0,
            layers_reused: layers.len(),
        });
    }
    let missing: Vec<usize> = (0..layers.len())
        .filter(|&i| !present(&layers[i].digest))
        .collect();
    // Two entries of one manifest may name the same blob: fetch it once.
    let mut unique = Vec::new();
    let mut names = HashSet::new();
    for &i in &missing {
        if names.insert(layers[i].digest.clone()) {
            unique.push(i);
        }
    }
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
    // Into place bottom to top: a deferred hard link may need any layer below it.
    let mut done: Vec<(usize, PathBuf, Unpacked)> = fetched;
    done.sort_by_key(|(i, _, _)| *i);
    let lower_path = |j: usize, done: &[(usize, PathBuf, Unpacked)]| -> PathBuf {
        done.iter()
            .find(|(k, _, _)| layers[*k].digest == layers[j].digest)
            .map(|(_, p, _)| p.join(layout::LAYERFS))
            .unwrap_or_else(|| repo.layerfs(&layers[j].digest))
    };
    for idx in 0..done.len() {
        let (i, tmp, u) = &done[idx];
        for (link, target) in &u.deferred_links {
            let lowers: Vec<PathBuf> = (0..*i).rev().map(|j| lower_path(j, &done)).collect();
            materialise_link(&tmp.join(layout::LAYERFS), link, target, &lowers).map_err(|e| {
                ImageError::UnsafeEntry {
                    image: image.clone(),
                    layer: layers[*i].digest.to_string(),
                    entry: String::from_utf8_lossy(link).into_owned(),
                    reason: e.to_string(),
                }
            })?;
        }
    }
    for (i, tmp, u) in &done {
        write_record(tmp, u, opts.sign.as_deref()).map_err(|e| ImageError::Layer {
            image: image.clone(),
            layer: layers[*i].digest.to_string(),
            source: Box::new(e),
        })?;
    }
    for (i, tmp, u) in &done {
        summary.bytes_fetched += u.compressed_size;
        summary.files += u.files;
        summary.content_bytes += u.diff_size;
        repo.install_layer(&layers[*i].digest, tmp)?;
    }
    // A layer fetched again by --repair leaves the flat root's hard links on the old files.
    if !flat_ok || (opts.repair && !unique.is_empty()) {
        let tmp = repo.temp_dir("flat")?;
        let paths: Vec<PathBuf> = layers.iter().map(|l| repo.layerfs(&l.digest)).collect();
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        let in_flat = |e: ImageError| ImageError::Layer {
            image: image.clone(),
            layer: "flat root".into(),
            source: Box::new(e),
        };
        FlatBuilder::build(&refs, &tmp, &config).map_err(|e| in_flat(ImageError::io(&tmp, e)))?;
        touch(&tmp.join(CATALOG_MARKER))?;
        write_flat_record(&tmp, &paths, cfg, &flat_record, opts.sign.as_deref())
            .map_err(in_flat)?;
        repo.install_flat(cfg, &tmp)?;
    }
    for l in layers {
        repo.add_origin(&l.digest, cfg)?;
    }
    let status = match &old {
        Some(o) if !same_image => {
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

/// Write the record of the layer unpacked (and checked) in `tmp`: what `verify=on` mounts
/// check it against. Made after the deferred hard links, so that it holds the layer as
/// installed.
fn write_record(
    tmp: &Path,
    u: &Unpacked,
    sign: Option<&crate::stack::trust::SigningKey>,
) -> Result<(), ImageError> {
    use crate::stack::record;
    let raw = |d: &Option<crate::image::digest::Digest>| d.as_ref().map_or([0; 32], |d| d.raw());
    let fs = tmp.join(layout::LAYERFS);
    let known = record::by_path(&u.digests);
    let bytes = record::build(&fs, &known, (raw(&u.compressed_digest), raw(&u.diff_id)))
        .map_err(|e| ImageError::io(&fs, io::Error::other(e.to_string())))?;
    save_record(&layout::record_file(tmp), &bytes, sign)
}

/// Write a record built as `bytes` to `file` (its signature first, with a key to sign with),
/// each by a temporary name and a rename.
fn save_record(
    file: &Path,
    bytes: &[u8],
    sign: Option<&crate::stack::trust::SigningKey>,
) -> Result<(), ImageError> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
    }
    if let Some(key) = sign {
        let rec = crate::stack::record::Record::from_vec(bytes.to_vec(), file)
            .map_err(|e| ImageError::io(file, io::Error::other(e.to_string())))?;
        crate::image::repo::write_atomic(&layout::sig_of(file), key.sign(&rec).as_bytes())?;
    }
    crate::image::repo::write_atomic(file, bytes)
}

/// Whether the tree at `dir` holds exactly what the record `file` says (for --repair: the
/// first difference is logged, naming it).
fn tree_matches(dir: &Path, file: &Path) -> bool {
    use crate::stack::{record::Record, verify};
    let (Ok(rec), Ok(mut layer)) = (Record::open(file), Layer::open(0, dir)) else {
        return false;
    };
    layer.set_verifier(verify::Verifier::new(
        rec,
        dir.display().to_string(),
        true,
        None,
    ));
    match verify::check_whole_layer(&layer) {
        Ok(()) => true,
        Err(e) => {
            warn!(layer = %dir.display(), "does not match its record ({e}): fetched again");
            false
        }
    }
}

/// Whether `file` is a readable record and, with a key to sign with, signed by that key.
fn record_ok(file: &Path, sign: Option<&crate::stack::trust::SigningKey>) -> bool {
    let Ok(rec) = crate::stack::record::Record::open(file) else {
        return false;
    };
    sign.is_none_or(|k| {
        crate::stack::trust::TrustedKeys::from_raw(vec![k.public()])
            .check(&rec, &layout::sig_of(file))
            .is_ok()
    })
}

/// Write the record of the flat root built in `tmp` from `layers` to `file` (beside where the
/// root goes). Its files are hard links to the layers' own: their digests come from the
/// layers' records, by inode; a file that had to be copied is hashed.
fn write_flat_record(
    tmp: &Path,
    layers: &[PathBuf],
    cfg: &crate::image::digest::Digest,
    file: &Path,
    sign: Option<&crate::stack::trust::SigningKey>,
) -> Result<(), ImageError> {
    use crate::stack::record::{self, FileDigest, Record};
    use std::collections::HashMap;
    use std::os::unix::ffi::OsStrExt;
    let mut by_inode: HashMap<(u64, u64), FileDigest> = HashMap::new();
    for l in layers {
        let Some((rec_file, _)) = layout::record_for(l) else {
            continue;
        };
        // Signing vouches for the digests taken from a layer's record: only a record this
        // key signed (made from a tar this run or an earlier one checked) may give them.
        if sign.is_some() && !record_ok(&rec_file, sign) {
            return Err(ImageError::io(
                &rec_file,
                io::Error::other(
                    "not signed by the --sign key: fetch the layer again with convert --repair --sign",
                ),
            ));
        }
        let Ok(rec) = Record::open(&rec_file) else {
            continue;
        };
        for (path, d) in rec.files() {
            let p = l.join(std::ffi::OsStr::from_bytes(&path));
            if let Ok(m) = std::fs::symlink_metadata(&p) {
                by_inode.insert((m.dev(), m.ino()), d);
            }
        }
    }
    let known = |_: &[u8], st: &rustix::fs::Stat| by_inode.get(&(st.st_dev, st.st_ino)).cloned();
    let bytes = record::build(tmp, &known, (cfg.raw(), [0; 32]))
        .map_err(|e| ImageError::io(tmp, io::Error::other(e.to_string())))?;
    save_record(file, &bytes, sign)
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
    let digest = crate::image::digest::Digest::of(&r.manifest_bytes).to_string();
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
mod tests {
    //! The pipeline on temporary directories with an image held in memory: no root, no
    //! network. (Real sources and registries are in `tests/convert.rs`.)
    use super::*;
    use crate::image::digest::Digest;
    use crate::image::manifest::{Fetched, Platform};
    use std::collections::HashMap;
    use std::io::Read;

    struct MemImage {
        name: ImageName,
        manifest: Vec<u8>,
        config: Vec<u8>,
        blobs: HashMap<String, Vec<u8>>,
    }

    enum E<'a> {
        File(&'a str, &'a str),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn tar(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(1_600_000_000);
            h.set_uid(rustix::process::geteuid().as_raw() as u64);
            h.set_gid(rustix::process::getegid().as_raw() as u64);
            match e {
                E::File(p, c) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(c.len() as u64);
                    b.append_data(&mut h, p, c.as_bytes()).unwrap();
                }
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, p, &b""[..]).unwrap();
                }
                E::Link(p, target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, p, target).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn image(layers: &[Vec<u8>]) -> MemImage {
        let mut blobs = HashMap::new();
        let (mut descs, mut diff_ids) = (Vec::new(), Vec::new());
        for l in layers {
            let d = Digest::of(l).to_string();
            diff_ids.push(d.clone());
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d, "size": l.len()
            }));
            blobs.insert(d, l.clone());
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        }))
        .unwrap();
        let cd = Digest::of(&config).to_string();
        blobs.insert(cd.clone(), config.clone());
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": descs
        }))
        .unwrap();
        MemImage {
            name: ImageName::parse_bare("example.org/lab/mem:1", false).unwrap(),
            manifest,
            config,
            blobs,
        }
    }

    impl ImageSource for MemImage {
        fn resolve(&self, _p: &Platform) -> Result<Resolved, ImageError> {
            let manifest = match Fetched::parse("mem", None, &self.manifest)? {
                Fetched::Image(m) => m,
                _ => unreachable!("a manifest"),
            };
            Ok(Resolved {
                name: self.name.clone(),
                manifest_bytes: self.manifest.clone(),
                manifest,
                config_bytes: self.config.clone(),
            })
        }
        fn blob(&self, d: &Descriptor) -> Result<Box<dyn Read + Send>, ImageError> {
            let b = self
                .blobs
                .get(&d.digest.to_string())
                .cloned()
                .unwrap_or_default();
            Ok(Box::new(std::io::Cursor::new(b)))
        }
    }

    fn opts() -> Options {
        Options {
            max_layer_size: MAX_LAYER_SIZE,
            platform: Platform::parse("linux/amd64").unwrap(),
            jobs: 2,
            name: None,
            measure_disk: false,
            thin: None,
            repair: false,
            sign: None,
        }
    }

    #[test]
    fn converts_installs_and_is_then_up_to_date() {
        let t = tempfile::tempdir().unwrap();
        let repo = Repo::open(&t.path().join("repo")).unwrap();
        let bottom = tar(&[
            E::Dir("etc"),
            E::File("etc/os", "one\n"),
            E::File("etc/gone", "x"),
            E::Dir("opq"),
            E::File("opq/old", "o"),
        ]);
        let top = tar(&[
            E::File("etc/.wh.gone", ""),
            E::Dir("opq"),
            E::File("opq/.wh..wh..opq", ""),
            E::File("opq/new", "n"),
            E::Link("etc/os-link", "etc/os"),
        ]);
        let img = image(&[bottom, top]);
        let mut sum = Summary::default();
        let s = convert_source(&repo, &img, &opts(), &mut sum).unwrap();
        assert_eq!((s.status, s.layers_fetched), ("converted", 2));
        let flat = repo.public_link(&img.name);
        let read = |p: &str| std::fs::read_to_string(flat.join(p)).ok();
        assert_eq!(read("etc/os").as_deref(), Some("one\n"));
        assert_eq!(
            read("etc/os-link").as_deref(),
            Some("one\n"),
            "hard link into a lower layer"
        );
        assert_eq!(read("etc/gone"), None, "whited out");
        assert_eq!(read("opq/old"), None, "opaque dir");
        assert_eq!(read("opq/new").as_deref(), Some("n"));
        assert!(flat.join(".singularity.d/runscript").exists());
        assert!(repo.manifest_of(&img.name).is_some());
        // Layers keep their whiteouts literally, as DUCC's do.
        let top_layer = img.resolve(&opts().platform).unwrap().manifest.layers[1]
            .digest
            .clone();
        assert!(repo.layerfs(&top_layer).join("etc/.wh.gone").exists());
        let s = convert_source(&repo, &img, &opts(), &mut sum).unwrap();
        assert_eq!((s.status, s.layers_fetched), ("up to date", 0));
    }

    #[test]
    fn a_corrupt_blob_installs_nothing() {
        let t = tempfile::tempdir().unwrap();
        let repo = Repo::open(&t.path().join("repo")).unwrap();
        let mut img = image(&[tar(&[E::File("f", "x")])]);
        for b in img.blobs.values_mut() {
            if b.len() > 1000 {
                b[600] ^= 1;
            }
        }
        let e = convert_source(&repo, &img, &opts(), &mut Summary::default()).unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        assert!(repo.manifest_of(&img.name).is_none());
        let tmp = t.path().join("repo/.stratafs-tmp");
        assert!(!tmp.exists() || std::fs::read_dir(&tmp).unwrap().next().is_none());
    }
}
