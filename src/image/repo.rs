//! The repository layout DUCC writes and CVMFS publishes (see the README's "Repository
//! layout"): `.layers/<xx>/<L>/{layerfs,.metadata}`, `.flat/<xx>/<CFG>`,
//! `.metadata/<registry>/<repo>:<tag>/manifest.json`, public links, `.cvmfscatalog` markers.
//!
//! Everything appears under its final name by one rename from `.stratafs-tmp/` (same
//! filesystem), so a crash leaves either nothing or a complete layer, root or manifest. One
//! convert or gc at a time holds `.stratafs.lock`; the next one empties `.stratafs-tmp/`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::image::Error as ImageError;
use crate::image::digest::Digest;
use crate::image::manifest::Manifest;
use crate::image::reference::ImageName;
use crate::stack::cvmfs::CATALOG_MARKER;
use crate::stack::layout;

const TMP: &str = ".stratafs-tmp";
const LOCK: &str = ".stratafs.lock";

pub struct Repo {
    pub root: PathBuf,
    /// Held by writers (convert, gc); readers (mount, images) take none.
    _lock: Option<File>,
    seq: AtomicU64,
}

fn io_err(p: &Path) -> impl Fn(io::Error) -> ImageError + '_ {
    move |e| ImageError::io(p, e)
}

/// `[{"id":…, "compressed-diff-digest":…, "diff-digest":…, "diff-size":…}]` as DUCC writes.
#[derive(Debug, Serialize, Deserialize)]
pub struct LayerInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(rename = "compressed-diff-digest")]
    pub compressed_diff_digest: String,
    #[serde(rename = "diff-digest")]
    pub diff_digest: String,
    #[serde(rename = "diff-size")]
    pub diff_size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Origin {
    origin: Vec<String>,
}

/// An image recorded in the repository.
#[derive(Debug)]
pub struct Image {
    /// The path under `.metadata/` (`registry/repo:tag`).
    pub name: String,
    pub manifest: Manifest,
}

impl Repo {
    /// Open (creating it if needed) and lock the repository; clean what an interrupted run
    /// left in the temporary area.
    pub fn open(root: &Path) -> Result<Repo, ImageError> {
        if root.exists() && !root.is_dir() {
            return Err(ImageError::Repo {
                path: root.into(),
                reason: "not a directory".into(),
            });
        }
        fs::create_dir_all(root).map_err(io_err(root))?;
        let root = fs::canonicalize(root).map_err(io_err(root))?;
        let lock_path = root.join(LOCK);
        let lock = File::options()
            .create(true)
            .append(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| ImageError::Repo {
                path: root.clone(),
                reason: "locked by another stratafs convert or gc".into(),
            },
        )?;
        let repo = Repo {
            root,
            _lock: Some(lock),
            seq: AtomicU64::new(0),
        };
        let tmp = repo.root.join(TMP);
        if tmp.exists() {
            force_remove(&tmp).map_err(io_err(&tmp))?;
        }
        for d in [TMP, layout::LAYERS, layout::FLAT, layout::METADATA] {
            let p = repo.root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        for m in [layout::LAYERS, layout::FLAT] {
            touch(&repo.root.join(m).join(CATALOG_MARKER))?;
        }
        Ok(repo)
    }

    /// Close the repository after a run, leaving nothing of stratafs' own scratch (the
    /// temporary area, the lock file) in the tree: for a tree about to be published.
    pub fn close_clean(self) -> Result<(), ImageError> {
        let tmp = self.root.join(TMP);
        force_remove(&tmp).map_err(io_err(&tmp))?;
        let lock = self.root.join(LOCK);
        fs::remove_file(&lock).map_err(io_err(&lock))?;
        Ok(())
    }

    /// Open for reading only: no lock, nothing created or cleaned (it may be a read-only
    /// CVMFS mount, and a convert may be running).
    pub fn read(root: &Path) -> Result<Repo, ImageError> {
        let root = fs::canonicalize(root).map_err(io_err(root))?;
        if !root.join(layout::LAYERS).is_dir() {
            return Err(ImageError::Repo {
                path: root,
                reason: "not a repository (no .layers directory)".into(),
            });
        }
        Ok(Repo {
            root,
            _lock: None,
            seq: AtomicU64::new(0),
        })
    }

    /// Find an image by name (`registry/repo:tag`, as `stratafs images` lists it) or by
    /// digest (`sha256:…` of its config or manifest, or a unique prefix of either).
    pub fn find_image(&self, want: &str) -> Result<(Image, Vec<u8>), ImageError> {
        let images = self.images()?;
        let hex = want.strip_prefix("sha256:").unwrap_or(want);
        let by_digest = hex.len() >= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        let mut found: Vec<Image> = Vec::new();
        for i in images {
            let name_match = i.name == want
                || ImageName::parse_bare(want, false).is_ok_and(|n| n.metadata_path() == i.name);
            let digest_match = by_digest && {
                let bytes = fs::read(self.manifest_file(&i.name)).unwrap_or_default();
                i.manifest.config.digest.hex().starts_with(hex)
                    || Digest::of(&bytes).hex().starts_with(hex)
            };
            if name_match || digest_match {
                found.push(i);
            }
        }
        // Several names of one image (same config: the same root file system) are one.
        let same = found
            .windows(2)
            .all(|w| w[0].manifest.config.digest == w[1].manifest.config.digest);
        if found.len() > 1 && same {
            found.truncate(1);
        }
        match found.len() {
            1 => {
                let i = found.pop().expect("one");
                let bytes = fs::read(self.manifest_file(&i.name)).map_err(io_err(&self.root))?;
                Ok((i, bytes))
            }
            0 => Err(ImageError::Repo {
                path: self.root.clone(),
                reason: format!("no image '{want}' (see stratafs images --repo)"),
            }),
            n => Err(ImageError::Repo {
                path: self.root.clone(),
                reason: format!("'{want}' names {n} images: give more of the digest or the name"),
            }),
        }
    }

    fn manifest_file(&self, metadata_name: &str) -> PathBuf {
        layout::metadata_dir(&self.root)
            .join(metadata_name)
            .join("manifest.json")
    }

    /// A fresh directory in the temporary area.
    /// The layers of the repository (`.layers/<xx>/<hex>` with a `layerfs`) that have no
    /// record: `verify=on` mounts refuse them.
    pub fn layers_without_record(&self) -> Result<Vec<PathBuf>, ImageError> {
        let top = self.root.join(layout::LAYERS);
        let mut out = Vec::new();
        for fan in fs::read_dir(&top).map_err(io_err(&top))? {
            let fan = fan.map_err(io_err(&top))?.path();
            let Ok(dirs) = fs::read_dir(&fan) else {
                continue;
            };
            for d in dirs.flatten() {
                let d = d.path();
                let named = d
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(layout::is_hex);
                if named && d.join(layout::LAYERFS).is_dir() && !layout::record_file(&d).is_file() {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn temp_dir(&self, what: &str) -> Result<PathBuf, ImageError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let p = self
            .root
            .join(TMP)
            .join(format!("{what}-{}-{n}", std::process::id()));
        fs::create_dir(&p).map_err(io_err(&p))?;
        Ok(p)
    }

    pub fn layer_dir(&self, l: &Digest) -> PathBuf {
        layout::layer_dir(&self.root, l.hex())
    }

    pub fn layerfs(&self, l: &Digest) -> PathBuf {
        layout::layerfs(&self.root, l.hex())
    }

    pub fn flat_dir(&self, cfg: &Digest) -> PathBuf {
        layout::flat_dir(&self.root, cfg.hex())
    }

    /// A layer is there when its `layerfs` is (it only ever appears by rename, complete).
    pub fn has_layer(&self, l: &Digest) -> bool {
        self.layerfs(l).is_dir()
    }

    /// Move a finished layer (a temp dir holding `layerfs/` and `.metadata/`) into place.
    pub fn install_layer(&self, l: &Digest, tmp: &Path) -> Result<(), ImageError> {
        let dest = self.layer_dir(l);
        let parent = dest.parent().expect("a layer's fan-out directory");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        touch(&parent.join(CATALOG_MARKER))?;
        if dest.exists() {
            // A leftover without layerfs (DUCC metadata only), or a layer `--repair` fetched
            // again: moved aside in one rename, the new one renamed in, the old removed.
            let old = self.temp_dir("replaced")?;
            fs::rename(&dest, old.join("layer")).map_err(io_err(&dest))?;
            fs::rename(tmp, &dest).map_err(io_err(&dest))?;
            return force_remove(&old).map_err(io_err(&old));
        }
        fs::rename(tmp, &dest).map_err(io_err(&dest))
    }

    /// Record that image `cfg` uses layer `l` (`.metadata/origin.json`).
    pub fn add_origin(&self, l: &Digest, cfg: &Digest) -> Result<(), ImageError> {
        let p = self.layer_dir(l).join(layout::METADATA).join("origin.json");
        let mut o: Origin = fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let id = cfg.to_string();
        if o.origin.contains(&id) {
            return Ok(());
        }
        o.origin.push(id);
        fs::create_dir_all(p.parent().expect("has parent")).map_err(io_err(&p))?;
        write_atomic(&p, &serde_json::to_vec(&o).expect("serialisable"))
    }

    /// A layer's uncompressed size from its `layers.json` (DUCC writes it too).
    pub fn layer_size(&self, l: &Digest) -> Option<u64> {
        let b = fs::read(self.layer_dir(l).join(layout::METADATA).join("layers.json")).ok()?;
        let v: Vec<LayerInfo> = serde_json::from_slice(&b).ok()?;
        v.first().map(|i| i.diff_size)
    }

    pub fn has_flat(&self, cfg: &Digest) -> bool {
        self.flat_dir(cfg).is_dir()
    }

    pub fn install_flat(&self, cfg: &Digest, tmp: &Path) -> Result<(), ImageError> {
        let dest = self.flat_dir(cfg);
        let parent = dest.parent().expect("a flat root's fan-out directory");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        if dest.exists() {
            // Built again by --repair: the old one aside in one rename, then removed.
            let old = self.temp_dir("replaced")?;
            fs::rename(&dest, old.join("flat")).map_err(io_err(&dest))?;
            fs::rename(tmp, &dest).map_err(io_err(&dest))?;
            return force_remove(&old).map_err(io_err(&old));
        }
        fs::rename(tmp, &dest).map_err(io_err(&dest))
    }

    fn manifest_path(&self, name: &ImageName) -> PathBuf {
        self.manifest_file(&name.metadata_path())
    }

    /// Where the signatures of `name`'s manifest are (`convert --sign`).
    pub fn manifest_sig_file(&self, name: &ImageName) -> PathBuf {
        crate::stack::layout::sig_of(&self.manifest_path(name))
    }

    /// The same, for an image as [`Repo::images`] names it (its path under `.metadata/`).
    pub fn manifest_sig_at(&self, metadata_path: &str) -> PathBuf {
        crate::stack::layout::sig_of(&self.manifest_file(metadata_path))
    }

    /// The manifest recorded for `name`, if it was converted.
    pub fn manifest_of(&self, name: &ImageName) -> Option<Vec<u8>> {
        fs::read(self.manifest_path(name)).ok()
    }

    /// The image config blob, beside the manifest (podman's store needs it; DUCC does not
    /// write it).
    pub fn write_config(&self, name: &ImageName, bytes: &[u8]) -> Result<(), ImageError> {
        let p = self.manifest_path(name).with_file_name("config.json");
        fs::create_dir_all(p.parent().expect("has parent")).map_err(io_err(&p))?;
        write_atomic(&p, bytes)
    }

    /// The config blob of an image listed by [`Repo::images`], if stratafs converted it.
    pub fn config_of(&self, metadata_name: &str) -> Option<Vec<u8>> {
        fs::read(
            self.manifest_file(metadata_name)
                .with_file_name("config.json"),
        )
        .ok()
    }

    /// The manifest bytes of an image listed by [`Repo::images`].
    pub fn manifest_bytes_of(&self, metadata_name: &str) -> Option<Vec<u8>> {
        fs::read(self.manifest_file(metadata_name)).ok()
    }

    /// Written last: from now on the image counts as converted.
    pub fn write_manifest(&self, name: &ImageName, bytes: &[u8]) -> Result<(), ImageError> {
        let p = self.manifest_path(name);
        fs::create_dir_all(p.parent().expect("has parent")).map_err(io_err(&p))?;
        write_atomic(&p, bytes)
    }

    /// `<registry>/<repo>:<tag>` -> `../../.flat/<xx>/<cfg>`, relative, replaced atomically.
    pub fn link(&self, name: &ImageName, cfg: &Digest) -> Result<(), ImageError> {
        let rel = name.public_path();
        let depth = rel.split('/').count() - 1;
        let target = format!("{}.flat/{}/{}", "../".repeat(depth), cfg.xx(), cfg.hex());
        let p = self.root.join(&rel);
        let parent = p.parent().expect("has parent");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        if fs::read_link(&p).is_ok_and(|t| t == Path::new(&target)) {
            return Ok(());
        }
        let tmp = parent.join(format!(".stratafs-link-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &p).map_err(io_err(&p))
    }

    pub fn public_link(&self, name: &ImageName) -> PathBuf {
        self.root.join(name.public_path())
    }

    /// A tag moved: keep its old manifest in `remove-schedule.json` for `gc`.
    pub fn schedule_removal(&self, name: &ImageName, old: &[u8]) -> Result<(), ImageError> {
        let p = layout::metadata_dir(&self.root).join("remove-schedule.json");
        let mut list: Vec<serde_json::Value> = fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let manifest: serde_json::Value =
            serde_json::from_slice(old).unwrap_or(serde_json::Value::Null);
        list.push(serde_json::json!({ "image": name.metadata_path(), "manifest": manifest }));
        write_atomic(&p, &serde_json::to_vec_pretty(&list).expect("serialisable"))
    }

    /// Every image with a manifest under `.metadata/`.
    pub fn images(&self) -> Result<Vec<Image>, ImageError> {
        let mut out = Vec::new();
        let base = layout::metadata_dir(&self.root);
        let mut stack = vec![base.clone()];
        while let Some(d) = stack.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ImageError::io(&d, e)),
            };
            for e in rd {
                let e = e.map_err(io_err(&d))?;
                let p = e.path();
                if e.file_type().map_err(io_err(&p))?.is_dir() {
                    stack.push(p);
                } else if e.file_name() == "manifest.json" {
                    let bytes = fs::read(&p).map_err(io_err(&p))?;
                    let manifest: Manifest = serde_json::from_slice(&bytes)
                        .map_err(|e| ImageError::format(p.display().to_string(), e))?;
                    let name = d
                        .strip_prefix(&base)
                        .unwrap_or(&d)
                        .to_string_lossy()
                        .into_owned();
                    out.push(Image { name, manifest });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Remove the image `want` names (a name as `images` lists it, or a reference naming it):
    /// its metadata leaves in one rename, after which no command sees the image, then its
    /// public link goes. Its layers and flat root stay for `gc`. The name removed.
    pub fn remove_image(&self, want: &str) -> Result<String, ImageError> {
        let parsed = ImageName::parse_bare(want, false).ok();
        let name = self
            .images()?
            .into_iter()
            .map(|i| i.name)
            .find(|n| n == want || parsed.as_ref().is_some_and(|p| p.metadata_path() == *n))
            .ok_or_else(|| ImageError::Repo {
                path: self.root.clone(),
                reason: format!("no image '{want}' (see stratafs images --repo)"),
            })?;
        let meta = layout::metadata_dir(&self.root).join(&name);
        let manifest = fs::read(meta.join("manifest.json")).map_err(io_err(&meta))?;
        let t = self.root.join(TMP).join(format!(
            "rmi-{}-{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        fs::rename(&meta, &t).map_err(io_err(&meta))?;
        // A tagged image's link is its name; a digest-only one's adds the manifest digest.
        let digest = Digest::of(&manifest);
        for link in [
            self.root.join(&name),
            self.root.join(format!("{name}:{digest}")),
        ] {
            if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
                fs::remove_file(&link).map_err(io_err(&link))?;
                remove_empty_parents(&link, &self.root);
            }
        }
        force_remove(&t).map_err(io_err(&meta))?;
        remove_empty_parents(&meta, &layout::metadata_dir(&self.root));
        Ok(name)
    }

    /// Remove layers and flat roots no image uses. Returns the removed paths (only listed
    /// with `dry_run`).
    pub fn gc(&self, dry_run: bool) -> Result<Vec<PathBuf>, ImageError> {
        let images = self.images()?;
        let mut live_layers = BTreeSet::new();
        let mut live_flat = BTreeSet::new();
        for i in &images {
            live_flat.insert(i.manifest.config.digest.hex().to_string());
            for l in &i.manifest.layers {
                live_layers.insert(l.digest.hex().to_string());
            }
        }
        let mut dead = Vec::new();
        for (area, live) in [(layout::LAYERS, &live_layers), (layout::FLAT, &live_flat)] {
            let base = self.root.join(area);
            for xx in read_names(&base)? {
                let xdir = base.join(&xx);
                if !xdir.is_dir() {
                    continue;
                }
                for h in read_names(&xdir)? {
                    // A flat root's record (and its signatures) goes with the root.
                    let of = h.split('.').next().unwrap_or_default();
                    if h != CATALOG_MARKER && !live.contains(of) {
                        dead.push(xdir.join(h));
                    }
                }
            }
        }
        // A trace goes with its image.
        let traces = self.root.join(layout::TRACES);
        for xx in read_names(&traces)? {
            let xdir = traces.join(&xx);
            for f in read_names(&xdir)? {
                if f.strip_suffix(".json")
                    .is_some_and(|h| !live_flat.contains(h))
                {
                    dead.push(xdir.join(f));
                }
            }
        }
        if dry_run {
            return Ok(dead);
        }
        for d in &dead {
            if d.is_file() {
                fs::remove_file(d).map_err(io_err(d))?;
                continue;
            }
            // Out of sight in one step, then deleted.
            let t = self.root.join(TMP).join(format!(
                "gc-{}-{}",
                std::process::id(),
                self.seq.fetch_add(1, Ordering::Relaxed)
            ));
            fs::rename(d, &t).map_err(io_err(d))?;
            force_remove(&t).map_err(io_err(d))?;
        }
        let sched = layout::metadata_dir(&self.root).join("remove-schedule.json");
        if sched.exists() {
            fs::remove_file(&sched).map_err(io_err(&sched))?;
        }
        Ok(dead)
    }
}

/// Remove the directories above `p` that are left empty, up to `top` (not included).
fn remove_empty_parents(p: &Path, top: &Path) {
    let mut d = p.parent();
    while let Some(dir) = d.filter(|d| d.starts_with(top) && *d != top) {
        if fs::remove_dir(dir).is_err() {
            break;
        }
        d = dir.parent();
    }
}

fn read_names(d: &Path) -> Result<Vec<String>, ImageError> {
    match fs::read_dir(d) {
        Ok(rd) => rd
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .map_err(io_err(d))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ImageError::io(d, e)),
    }
}

pub fn touch(p: &Path) -> Result<(), ImageError> {
    File::options()
        .create(true)
        .append(true)
        .open(p)
        .map(drop)
        .map_err(io_err(p))
}

/// Write to a temporary name in the same directory, sync, rename.
pub fn write_atomic(p: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = p.with_file_name(format!(
        ".{}.tmp-{}",
        p.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, p).map_err(io_err(p))
}

/// Remove a tree even where an image made directories read-only (we own them as a user).
pub fn force_remove(p: &Path) -> io::Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(p)?;
            fs::remove_dir_all(p)
        }
    }
}

fn make_writable(p: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(p)?;
    if md.is_dir() {
        fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
        for e in fs::read_dir(p)? {
            make_writable(&e?.path())?;
        }
    }
    Ok(())
}
