//! `podmanStore/`: a containers/storage additional image store over the repository, one
//! synthetic layer per image whose `diff` is the image's `.flat` root, so podman
//! (`additionalimagestores = ["<repo>/podmanStore"]`) lists and runs every converted image
//! without copying a byte:
//!
//! ```text
//! podmanStore/overlay/<LID>/diff -> ../../../.flat/<xx>/<CFG>   LID = sha256("cvmfs-flat-layer:" + CFG)
//! podmanStore/overlay/<LID>/link, overlay/l/<link> -> ../<LID>/diff
//! podmanStore/overlay-images/images.json, <CFG>/manifest, <CFG>/=<base64("sha256:<CFG>")>
//! podmanStore/overlay-layers/layers.json, *.lock
//! ```
//!
//! The whole store is rewritten from the repository's metadata; new files appear by rename
//! and `images.json` last, so a podman reading the store meanwhile sees the old or the new one.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use base64::Engine;
use serde_json::json;

use crate::image::Error as ImageError;
use crate::image::digest::Digest;
use crate::image::manifest::ImageConfig;
use crate::image::repo::{Repo, touch, write_atomic};
use crate::stack::cvmfs::CATALOG_MARKER;

const STORE: &str = "podmanStore";

/// The synthetic layer id of an image: the same as DUCC's, so both tools agree.
pub fn layer_id(cfg: &Digest) -> String {
    Digest::of(format!("cvmfs-flat-layer:{}", cfg.hex()).as_bytes())
        .hex()
        .to_string()
}

/// The 26-character short name containers/storage keeps in `overlay/l/`.
fn short_link(lid: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    Digest::of(lid.as_bytes())
        .hex()
        .as_bytes()
        .chunks(2)
        .take(26)
        .map(|p| {
            let v = u8::from_str_radix(std::str::from_utf8(p).unwrap_or("0"), 16).unwrap_or(0);
            ALPHABET[(v & 31) as usize] as char
        })
        .collect()
}

fn io(p: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |e| ImageError::io(p, e)
}

/// Rewrite `podmanStore/` for every image stratafs converted into the repository.
pub fn write(repo: &Repo) -> Result<usize, ImageError> {
    let root = repo.root.join(STORE);
    skeleton(&root)?;
    let by_cfg = images_by_config(repo)?;
    let mut images = Vec::new();
    let mut layers = Vec::new();
    for (cfg, e) in &by_cfg {
        let (image, layer) = write_image(&root, cfg, e)?;
        images.push(image);
        layers.push(layer);
    }
    // Layers before the images that name them.
    write_atomic(
        &root.join("overlay-layers/layers.json"),
        &serde_json::to_vec(&layers).expect("serialisable"),
    )?;
    write_atomic(
        &root.join("overlay-images/images.json"),
        &serde_json::to_vec(&images).expect("serialisable"),
    )?;
    remove_unnamed(&root, &by_cfg)?;
    Ok(by_cfg.len())
}

/// The store's directories, lock files and catalog markers.
fn skeleton(root: &Path) -> Result<(), ImageError> {
    for d in [
        "",
        "overlay",
        "overlay/l",
        "overlay-images",
        "overlay-layers",
    ] {
        let p = root.join(d);
        fs::create_dir_all(&p).map_err(io(&p))?;
    }
    for m in ["", "overlay", "overlay-images", "overlay-layers"] {
        touch(&root.join(m).join(CATALOG_MARKER))?;
    }
    touch(&root.join("overlay-images/images.lock"))?;
    touch(&root.join("overlay-layers/layers.lock"))?;
    Ok(())
}

/// One store image per config (several tags may name it).
struct Entry {
    names: Vec<String>,
    manifest: Vec<u8>,
    config: Vec<u8>,
    size: u64,
}

/// The repository's images that have a config blob and a flat root, by config.
fn images_by_config(repo: &Repo) -> Result<BTreeMap<Digest, Entry>, ImageError> {
    let mut by_cfg: BTreeMap<Digest, Entry> = BTreeMap::new();
    for img in repo.images()? {
        let cfg = img.manifest.config.digest.clone();
        let (Some(config), Some(manifest)) =
            (repo.config_of(&img.name), repo.manifest_bytes_of(&img.name))
        else {
            continue; // converted by DUCC: no config blob kept
        };
        if !repo.has_flat(&cfg) {
            continue;
        }
        let size = img
            .manifest
            .layers
            .iter()
            .map(|l| repo.layer_size(&l.digest).unwrap_or(l.size))
            .sum();
        let e = by_cfg.entry(cfg).or_insert(Entry {
            names: Vec::new(),
            manifest,
            config,
            size,
        });
        // A digest-only image has no tag to name it by; podman lists it by id.
        if img
            .name
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            e.names.push(img.name.clone());
        }
    }
    Ok(by_cfg)
}

/// The store's layer of image `cfg` (a `diff` link to its flat root, and the short link),
/// its image directory (manifest and config), and their entries in images.json and
/// layers.json.
fn write_image(
    root: &Path,
    cfg: &Digest,
    e: &Entry,
) -> Result<(serde_json::Value, serde_json::Value), ImageError> {
    let lid = layer_id(cfg);
    let ldir = root.join("overlay").join(&lid);
    if !ldir.join("diff").exists() {
        let tmp = root.join("overlay").join(format!(".tmp-{lid}"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(io(&tmp))?;
        std::os::unix::fs::symlink(
            format!("../../../.flat/{}/{}", cfg.xx(), cfg.hex()),
            tmp.join("diff"),
        )
        .map_err(io(&tmp))?;
        fs::write(tmp.join("link"), short_link(&lid)).map_err(io(&tmp))?;
        let _ = fs::remove_dir_all(&ldir);
        fs::rename(&tmp, &ldir).map_err(io(&ldir))?;
    }
    let l = root.join("overlay/l").join(short_link(&lid));
    if fs::read_link(&l).is_err() {
        std::os::unix::fs::symlink(format!("../{lid}/diff"), &l).map_err(io(&l))?;
    }
    let idir = root.join("overlay-images").join(cfg.hex());
    fs::create_dir_all(&idir).map_err(io(&idir))?;
    let cfg_key = cfg.to_string();
    let cfg_file = format!(
        "={}",
        base64::engine::general_purpose::STANDARD.encode(cfg_key.as_bytes())
    );
    write_atomic(&idir.join("manifest"), &e.manifest)?;
    write_atomic(&idir.join(&cfg_file), &e.config)?;
    let created = ImageConfig::parse("config", &e.config)
        .ok()
        .and_then(|c| c.created)
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
    let mdigest = Digest::of(&e.manifest).to_string();
    let image = json!({
        "id": cfg.hex(),
        "digest": mdigest,
        "names": e.names,
        "layer": lid,
        "metadata": "{}",
        "big-data-names": ["manifest", cfg_key],
        "big-data-sizes": {"manifest": e.manifest.len(), cfg_key.clone(): e.config.len()},
        "big-data-digests": {"manifest": mdigest, cfg_key.clone(): cfg_key},
        "created": created,
    });
    let layer = json!({
        "id": lid,
        "created": created,
        "diff-digest": format!("sha256:{lid}"),
        "diff-size": e.size,
    });
    Ok((image, layer))
}

/// Remove the store's layers and image directories that no image names any more.
fn remove_unnamed(root: &Path, by_cfg: &BTreeMap<Digest, Entry>) -> Result<(), ImageError> {
    let live: Vec<String> = by_cfg.keys().map(layer_id).collect();
    for e in fs::read_dir(root.join("overlay")).map_err(io(root))? {
        let e = e.map_err(io(root))?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n.len() == 64 && !live.contains(&n) {
            let _ = fs::remove_file(root.join("overlay/l").join(short_link(&n)));
            let _ = fs::remove_dir_all(e.path());
        }
    }
    for e in fs::read_dir(root.join("overlay-images")).map_err(io(root))? {
        let e = e.map_err(io(root))?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n.len() == 64 && !by_cfg.keys().any(|c| c.hex() == n) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}
