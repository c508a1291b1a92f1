//! Image metadata: manifests, indexes and configs in the OCI and Docker schema 2 forms, and
//! DUCC's re-serialisation of manifests with capitalised keys (`SchemaVersion`,
//! `Config.Digest`, `Layers[].Digest`), which a repository reader must accept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::image::Error as ImageError;
use crate::image::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What a registry is asked to return for a manifest request.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    #[serde(alias = "Architecture")]
    pub architecture: String,
    #[serde(alias = "OS")]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "Variant")]
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`, as `--platform` takes it.
    pub fn parse(s: &str) -> Result<Platform, ImageError> {
        let p: Vec<&str> = s.split('/').collect();
        match p.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: p.get(2).map(|v| v.to_string()),
            }),
            _ => Err(ImageError::format(
                format!("option --platform '{s}'"),
                "expected OS/ARCH[/VARIANT], e.g. linux/amd64",
            )),
        }
    }

    /// Whether a manifest for `self` serves a request for `want` (no variant asked: any).
    pub fn serves(&self, want: &Platform) -> bool {
        self.os == want.os
            && self.architecture == want.architecture
            && (want.variant.is_none() || want.variant == self.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default, alias = "MediaType")]
    pub media_type: String,
    #[serde(alias = "Digest")]
    pub digest: Digest,
    #[serde(default, alias = "Size")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "Platform")]
    pub platform: Option<Platform>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        alias = "Annotations"
    )]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default, alias = "SchemaVersion")]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty", alias = "MediaType")]
    pub media_type: String,
    #[serde(alias = "Config")]
    pub config: Descriptor,
    #[serde(alias = "Layers")]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// A manifest document as fetched: either one image or an index of them.
#[derive(Debug)]
pub enum Fetched {
    Image(Manifest),
    Index(Index),
}

impl Fetched {
    /// Decides by the declared media type, else by shape (`manifests` vs `layers`).
    pub fn parse(
        what: &str,
        media_type: Option<&str>,
        bytes: &[u8],
    ) -> Result<Fetched, ImageError> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ImageError::format(what, e))?;
        let declared = media_type
            .filter(|m| !m.is_empty() && *m != "application/json")
            .map(str::to_string)
            .or_else(|| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            });
        let is_index = match declared.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(m) if v.get("manifests").is_none() && v.get("layers").is_none() => {
                return Err(ImageError::format(
                    what,
                    format!("unsupported media type {m}"),
                ));
            }
            _ => v.get("manifests").is_some(),
        };
        if is_index {
            Ok(Fetched::Index(
                serde_json::from_value(v).map_err(|e| ImageError::format(what, e))?,
            ))
        } else {
            if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
                return Err(ImageError::format(
                    what,
                    "Docker schema 1 manifests are not supported",
                ));
            }
            Ok(Fetched::Image(
                serde_json::from_value(v).map_err(|e| ImageError::format(what, e))?,
            ))
        }
    }
}

impl Index {
    /// The manifest for `want`; the error lists what the index offers.
    pub fn select(&self, image: &str, want: &Platform) -> Result<&Descriptor, ImageError> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.serves(want)))
            .ok_or_else(|| ImageError::NoPlatform {
                image: image.to_string(),
                platform: want.to_string(),
                available: self
                    .manifests
                    .iter()
                    .map(|d| d.platform.as_ref().map_or("?".into(), |p| p.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// The parts of an image config that conversion uses; the blob itself is kept verbatim.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    pub fn parse(what: &str, bytes: &[u8]) -> Result<ImageConfig, ImageError> {
        serde_json::from_slice(bytes).map_err(|e| ImageError::format(what, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn reads_oci_and_ducc_manifests() {
        let oci = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{D}","size":5}},"layers":[{{"mediaType":"x","digest":"{D}","size":5}}]}}"#
        );
        let ducc = format!(
            r#"{{"SchemaVersion":2,"MediaType":"","Config":{{"MediaType":"","Size":5,"Digest":"{D}"}},"Layers":[{{"MediaType":"","Size":5,"Digest":"{D}"}}]}}"#
        );
        for m in [oci, ducc] {
            match Fetched::parse("m", None, m.as_bytes()).unwrap() {
                Fetched::Image(m) => {
                    assert_eq!(m.config.digest.to_string(), D);
                    assert_eq!(m.layers.len(), 1);
                }
                Fetched::Index(_) => panic!("not an index"),
            }
        }
    }

    #[test]
    fn selects_a_platform_from_an_index() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{D}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},{{"digest":"{D}","size":2,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let Fetched::Index(i) = Fetched::parse("i", None, idx.as_bytes()).unwrap() else {
            panic!()
        };
        let want = Platform::parse("linux/amd64").unwrap();
        assert_eq!(i.select("img", &want).unwrap().size, 2);
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(i.select("img", &arm).unwrap().size, 1);
        let e = i
            .select("img", &Platform::parse("linux/s390x").unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "img: no manifest for platform linux/s390x (the index has: linux/arm64/v8, linux/amd64)"
        );
    }
}
