//! Where image manifests, configs and layer blobs are read from: OCI layouts (a directory or
//! a tar of one), `docker save` archives, and registries (see [`crate::image::registry`]). All give
//! the same thing: a manifest for one platform and a reader per blob. Digests are verified by
//! the caller as it reads.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::image::Error as ImageError;
use crate::image::digest::Digest;
use crate::image::manifest::{
    DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, Descriptor, Fetched, Manifest, Platform,
};
use crate::image::reference::{ImageName, Source};
use crate::image::registry::Registry;

/// One image, resolved to a single platform.
pub struct Resolved {
    pub name: ImageName,
    /// The manifest bytes as stored (what `.metadata/…/manifest.json` gets).
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    pub config_bytes: Vec<u8>,
}

/// An opened image source.
pub trait ImageSource: Send + Sync {
    /// The manifest for `platform` (an index is resolved) and the config blob, verified.
    fn resolve(&self, platform: &Platform) -> Result<Resolved, ImageError>;
    /// A reader of a blob's bytes; the caller hashes them.
    fn blob(&self, d: &Descriptor) -> Result<Box<dyn Read + Send>, ImageError>;
    /// Why the last read of blob `d` failed in transit (stalled, cut off), if it did: such a
    /// failure is worth another try, a bad blob is not.
    fn transfer_failure(&self, _d: &crate::image::digest::Digest) -> Option<String> {
        None
    }
}

/// Open a source. `name` overrides the name a local source gets in the repository.
pub fn open(src: &Source, name: Option<&ImageName>) -> Result<Box<dyn ImageSource>, ImageError> {
    Ok(match src {
        Source::Oci { dir, tag } => Box::new(OciLayout {
            files: Box::new(DirFiles(dir.clone())),
            tag: tag.clone(),
            name: name
                .cloned()
                .unwrap_or_else(|| local_name(dir, tag.as_deref())),
            what: format!("oci:{}", dir.display()),
        }),
        Source::OciArchive { file, tag } => Box::new(OciLayout {
            files: Box::new(TarFiles::open(file)?),
            tag: tag.clone(),
            name: name
                .cloned()
                .unwrap_or_else(|| local_name(file, tag.as_deref())),
            what: format!("oci-archive:{}", file.display()),
        }),
        Source::DockerArchive { file, name: pick } => {
            Box::new(DockerArchive::open(file, pick.as_ref(), name)?)
        }
        Source::Registry(n) => Box::new(Registry::new(n.clone())?),
    })
}

/// `localhost/<file or dir name>:<tag>` for images that come without a registry name.
fn local_name(path: &Path, tag: Option<&str>) -> ImageName {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let repo = crate::image::reference::sanitize(&stem, '-');
    let repo = repo.trim_matches(|c| "._-".contains(c)).to_string();
    ImageName {
        plain_http: false,
        registry: "localhost".into(),
        repository: if repo.is_empty() {
            "image".into()
        } else {
            repo
        },
        tag: Some(tag.unwrap_or("latest").to_string()),
        digest: None,
    }
}

/// Files of an image layout or archive, by relative path.
trait Files: Send + Sync {
    fn open(&self, rel: &str) -> Result<Box<dyn Read + Send>, ImageError>;
    fn read(&self, rel: &str) -> Result<Vec<u8>, ImageError> {
        let mut v = Vec::new();
        self.open(rel)?
            .read_to_end(&mut v)
            .map_err(|e| ImageError::format(rel.to_string(), e))?;
        Ok(v)
    }
}

struct DirFiles(PathBuf);

impl Files for DirFiles {
    fn open(&self, rel: &str) -> Result<Box<dyn Read + Send>, ImageError> {
        let p = self.0.join(rel);
        File::open(&p)
            .map(|f| Box::new(f) as Box<dyn Read + Send>)
            .map_err(|e| ImageError::io(p, e))
    }
}

/// A tar read in place: member offsets are indexed once, blobs are read with positioned reads.
struct TarFiles {
    path: PathBuf,
    file: Arc<File>,
    members: HashMap<String, (u64, u64)>,
}

impl TarFiles {
    fn open(path: &Path) -> Result<TarFiles, ImageError> {
        let err = |e: io::Error| ImageError::io(path, e);
        let file = File::open(path).map_err(err)?;
        let mut members = HashMap::new();
        let mut ar = tar::Archive::new(file.try_clone().map_err(err)?);
        for e in ar.entries().map_err(err)? {
            let e = e.map_err(err)?;
            if e.header().entry_type().is_file() {
                let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let p = p.trim_start_matches("./").to_string();
                members.insert(p, (e.raw_file_position(), e.size()));
            }
        }
        Ok(TarFiles {
            path: path.to_path_buf(),
            file: Arc::new(file),
            members,
        })
    }
}

impl Files for TarFiles {
    fn open(&self, rel: &str) -> Result<Box<dyn Read + Send>, ImageError> {
        let &(off, len) = self.members.get(rel).ok_or_else(|| {
            ImageError::format(
                format!("{}", self.path.display()),
                format!("no member {rel}"),
            )
        })?;
        Ok(Box::new(Section {
            file: Arc::clone(&self.file),
            pos: off,
            end: off + len,
        }))
    }
}

/// A byte range of a file, read with pread: several can be read at once (duplicated
/// descriptors would share one file offset).
struct Section {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for Section {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// An OCI image layout: `index.json` and `blobs/sha256/<hex>`.
struct OciLayout {
    files: Box<dyn Files>,
    tag: Option<String>,
    name: ImageName,
    what: String,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

impl ImageSource for OciLayout {
    fn resolve(&self, platform: &Platform) -> Result<Resolved, ImageError> {
        let what = format!("{}/index.json", self.what);
        let idx = match Fetched::parse(&what, None, &self.files.read("index.json")?)? {
            Fetched::Index(i) => i,
            Fetched::Image(_) => return Err(ImageError::format(what, "not an image index")),
        };
        let top = match &self.tag {
            Some(t) => idx
                .manifests
                .iter()
                .find(|d| d.annotations.get(REF_NAME) == Some(t))
                .ok_or_else(|| {
                    ImageError::format(what.clone(), format!("no image tagged '{t}'"))
                })?,
            None if idx.manifests.len() == 1 => &idx.manifests[0],
            None => {
                return Err(ImageError::format(
                    what,
                    "several images: name one as oci:DIR:TAG",
                ));
            }
        };
        resolve_with(
            &self.name,
            platform,
            top.digest.to_string(),
            Some(top.media_type.clone()),
            |reference, media_type| {
                let d = Digest::parse(reference)?;
                let bytes = self.files.read(&blob_path(&d))?;
                d.verify(&format!("{} manifest {d}", self.what), &bytes)?;
                Ok((bytes, media_type.map(str::to_string)))
            },
            |config| self.files.read(&blob_path(&config.digest)),
        )
    }

    fn blob(&self, d: &Descriptor) -> Result<Box<dyn Read + Send>, ImageError> {
        self.files.open(&blob_path(&d.digest))
    }
}

/// Follow indexes down to the manifest for `platform`, then fetch the config; both verified.
/// `manifest(reference, media type if known)` fetches one manifest document and checks it
/// against the reference when that is a digest; `config` fetches the config blob.
pub(crate) fn resolve_with(
    name: &ImageName,
    platform: &Platform,
    mut reference: String,
    mut media_type: Option<String>,
    manifest: impl Fn(&str, Option<&str>) -> Result<(Vec<u8>, Option<String>), ImageError>,
    config: impl Fn(&Descriptor) -> Result<Vec<u8>, ImageError>,
) -> Result<Resolved, ImageError> {
    let image = name.to_string();
    loop {
        let (bytes, ct) = manifest(&reference, media_type.as_deref())?;
        let what = format!("{image} manifest {reference}");
        match Fetched::parse(&what, ct.as_deref(), &bytes)? {
            Fetched::Index(i) => {
                let d = i.select(&image, platform)?;
                reference = d.digest.to_string();
                media_type = Some(d.media_type.clone());
            }
            Fetched::Image(m) => {
                let config_bytes = config(&m.config)?;
                m.config
                    .digest
                    .verify(&format!("{image} config"), &config_bytes)?;
                return Ok(Resolved {
                    name: name.clone(),
                    manifest_bytes: bytes,
                    manifest: m,
                    config_bytes,
                });
            }
        }
    }
}

/// `docker save` / `podman save` output: `manifest.json` naming a config and layer tars.
struct DockerArchive {
    files: TarFiles,
    name: ImageName,
    resolved_manifest: Manifest,
    manifest_bytes: Vec<u8>,
    config_bytes: Vec<u8>,
    layer_paths: HashMap<Digest, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl DockerArchive {
    fn open(
        file: &Path,
        pick: Option<&ImageName>,
        name: Option<&ImageName>,
    ) -> Result<DockerArchive, ImageError> {
        let files = TarFiles::open(file)?;
        let what = format!("docker-archive:{}", file.display());
        let entries: Vec<DockerEntry> = serde_json::from_slice(&files.read("manifest.json")?)
            .map_err(|e| ImageError::format(format!("{what} manifest.json"), e))?;
        let parse_tag = |t: &str| ImageName::parse_bare(t, false).ok();
        let (entry, tag_name) = match pick {
            Some(p) => entries
                .iter()
                .find_map(|e| {
                    e.repo_tags
                        .iter()
                        .flatten()
                        .filter_map(|t| parse_tag(t))
                        .find(|n| n == p)
                        .map(|n| (e, Some(n)))
                })
                .ok_or_else(|| ImageError::format(what.clone(), format!("no image named {p}")))?,
            None if entries.len() == 1 => {
                let e = &entries[0];
                (e, e.repo_tags.iter().flatten().find_map(|t| parse_tag(t)))
            }
            None => {
                return Err(ImageError::format(
                    what,
                    "several images: name one as docker-archive:FILE:NAME:TAG",
                ));
            }
        };
        let config_bytes = files.read(&entry.config)?;
        let config = Descriptor {
            media_type: DOCKER_CONFIG.into(),
            digest: Digest::of(&config_bytes),
            size: config_bytes.len() as u64,
            platform: None,
            annotations: Default::default(),
        };
        let mut layers = Vec::new();
        let mut layer_paths = HashMap::new();
        for l in &entry.layers {
            // The layer's digest is that of the member as stored: hash it once here.
            let mut h = crate::image::digest::HashingReader::new(files.open(l)?);
            io::copy(&mut h, &mut io::sink()).map_err(|e| ImageError::io(file, e))?;
            let (digest, size) = h.finish().map_err(|e| ImageError::io(file, e))?;
            layer_paths.insert(digest.clone(), l.clone());
            layers.push(Descriptor {
                media_type: DOCKER_LAYER.into(),
                digest,
                size,
                platform: None,
                annotations: Default::default(),
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: DOCKER_MANIFEST.into(),
            config,
            layers,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("serialisable");
        let name = name
            .cloned()
            .or(tag_name)
            .unwrap_or_else(|| local_name(file, None));
        Ok(DockerArchive {
            files,
            name,
            resolved_manifest: manifest,
            manifest_bytes,
            config_bytes,
            layer_paths,
        })
    }
}

impl ImageSource for DockerArchive {
    fn resolve(&self, _platform: &Platform) -> Result<Resolved, ImageError> {
        Ok(Resolved {
            name: self.name.clone(),
            manifest_bytes: self.manifest_bytes.clone(),
            manifest: self.resolved_manifest.clone(),
            config_bytes: self.config_bytes.clone(),
        })
    }

    fn blob(&self, d: &Descriptor) -> Result<Box<dyn Read + Send>, ImageError> {
        let p = self.layer_paths.get(&d.digest).ok_or_else(|| {
            ImageError::format(
                format!("{}", self.files.path.display()),
                format!("no layer {}", d.digest),
            )
        })?;
        self.files.open(p)
    }
}
