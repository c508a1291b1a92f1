//! Image references: where an image comes from (`oci:`, `oci-archive:`, `docker-archive:`,
//! `docker://`, `https://`, `http://`) and the name it gets in the repository.

use std::fmt;
use std::path::PathBuf;

use crate::image::Error as ImageError;
use crate::image::digest::Digest;

/// Where to read an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OCI image layout directory; the tag is an `org.opencontainers.image.ref.name`.
    Oci {
        dir: PathBuf,
        tag: Option<String>,
    },
    /// A tar of an OCI image layout.
    OciArchive {
        file: PathBuf,
        tag: Option<String>,
    },
    /// `docker save` / `podman save` output; `name` picks one of its RepoTags.
    DockerArchive {
        file: PathBuf,
        name: Option<ImageName>,
    },
    Registry(ImageName),
}

/// `registry/repository[:tag][@digest]`, and how to reach the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    pub plain_http: bool,
    pub registry: String,
    pub repository: String,
    /// May hold `*` wildcards in a recipe, until resolved against the tag list.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Source {
    pub fn parse(s: &str) -> Result<Source, ImageError> {
        let bad = |reason: &str| ImageError::BadReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_path_tag(rest);
            if dir.is_empty() {
                return Err(bad("missing directory"));
            }
            return Ok(Source::Oci {
                dir: dir.into(),
                tag,
            });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, tag) = split_path_tag(rest);
            if file.is_empty() {
                return Err(bad("missing file"));
            }
            return Ok(Source::OciArchive {
                file: file.into(),
                tag,
            });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (file, name) = match rest.split_once(':') {
                Some((f, n)) => (
                    f,
                    Some(
                        ImageName::parse_bare(n, false)
                            .map_err(|_| bad("the part after the file must be NAME:TAG"))?,
                    ),
                ),
                None => (rest, None),
            };
            if file.is_empty() {
                return Err(bad("missing file"));
            }
            return Ok(Source::DockerArchive {
                file: file.into(),
                name,
            });
        }
        for (prefix, plain) in [("https://", false), ("http://", true), ("docker://", false)] {
            if let Some(rest) = s.strip_prefix(prefix) {
                return ImageName::parse_bare(rest, plain)
                    .map(Source::Registry)
                    .map_err(|r| bad(&r.to_string()));
            }
        }
        Err(bad(
            "expected oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG], \
             docker://, https:// or http://REGISTRY/REPO[:TAG][@sha256:...]",
        ))
    }
}

/// `DIR[:TAG]`: the tag is what follows the last colon, if it has no slash.
fn split_path_tag(s: &str) -> (&str, Option<String>) {
    match s.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, (!t.is_empty()).then(|| t.to_string())),
        _ => (s, None),
    }
}

/// A tag as the distribution grammar has it: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}` (a pattern may
/// also hold `*`). Anything else (`..`, `/`) could name a path in the repository.
pub fn valid_tag(t: &str, wildcard: bool) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || (wildcard && b == b'*'))
}

/// One path component of a repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or any number of "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A registry host: dot-separated labels of letters, digits and inner `-`, optional `:port`.
pub fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (h, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    host.split('.').all(label_ok)
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// What is wrong with an image name; the caller names the name.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("bad registry host '{0}'")]
    Registry(String),
    #[error("bad repository name '{0}'")]
    Repository(String),
    #[error("bad tag '{0}'")]
    Tag(String),
    #[error("a tag or a digest is required")]
    Unpinned,
    #[error("{0}")]
    Digest(String),
}

impl ImageName {
    /// `REGISTRY/REPO[:TAG][@sha256:...]`; a name without a registry part is Docker Hub's,
    /// as `docker pull` reads it.
    pub fn parse_bare(s: &str, plain_http: bool) -> Result<ImageName, NameError> {
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (
                n,
                Some(Digest::parse(d).map_err(|e| NameError::Digest(e.to_string()))?),
            ),
            None => (s, None),
        };
        let (path, tag) = match name.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, Some(t.to_string())),
            _ => (name, None),
        };
        let (registry, repository) = match path.split_once('/') {
            Some((r, rest)) if r.contains(['.', ':']) || r == "localhost" => {
                (r.to_string(), rest.to_string())
            }
            Some(_) => ("docker.io".to_string(), path.to_string()),
            None => ("docker.io".to_string(), format!("library/{path}")),
        };
        if !valid_host(&registry) {
            return Err(NameError::Registry(registry));
        }
        if repository.len() > 255 || !repository.split('/').all(valid_component) {
            return Err(NameError::Repository(repository));
        }
        if let Some(t) = &tag {
            if !valid_tag(t, true) {
                return Err(NameError::Tag(t.clone()));
            }
        }
        if tag.is_none() && digest.is_none() {
            return Err(NameError::Unpinned);
        }
        Ok(ImageName {
            plain_http,
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the registry API answers on (Docker Hub's names are not its API host).
    pub fn api_host(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            r => r,
        }
    }

    pub fn is_wildcard(&self) -> bool {
        self.tag.as_deref().is_some_and(|t| t.contains('*'))
    }

    /// The reference a manifest is fetched by: the digest when given, else the tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => unreachable!("checked at parse"),
        }
    }

    /// Path under `.metadata/` (DUCC: `registry/repo[:tag]`).
    pub fn metadata_path(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}/{}:{}", self.registry, self.repository, t),
            None => format!("{}/{}", self.registry, self.repository),
        }
    }

    /// The public link's path in the repository: `registry/repo:tag`, or `:sha256:<d>` for a
    /// digest-only reference.
    pub fn public_path(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}/{}:{}", self.registry, self.repository, t),
            (None, Some(d)) => format!("{}/{}:{}", self.registry, self.repository, d),
            (None, None) => unreachable!("checked at parse"),
        }
    }

    /// This name with another tag (from a registry's tag list): refused unless the tag
    /// matches the distribution grammar.
    pub fn with_tag(&self, tag: &str) -> Result<ImageName, NameError> {
        if !valid_tag(tag, false) {
            return Err(NameError::Tag(tag.to_string()));
        }
        Ok(ImageName {
            tag: Some(tag.to_string()),
            ..self.clone()
        })
    }

    /// Whether `tag` matches this name's tag pattern (`*`: any run of characters; the whole
    /// tag must match).
    pub fn tag_matches(&self, tag: &str) -> bool {
        self.tag.as_deref().is_some_and(|p| wildcard_match(p, tag))
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `s` with every character outside `[A-Za-z0-9._-]` replaced: a safe file or repository name.
pub fn sanitize(s: &str, replacement: char) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                replacement
            }
        })
        .collect()
}

/// `*` matches any run of characters, everything else itself.
fn wildcard_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || !s[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_source_form() {
        assert_eq!(
            Source::parse("oci:/tmp/lay:v1").unwrap(),
            Source::Oci {
                dir: "/tmp/lay".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Source::parse("oci:/tmp/lay").unwrap(),
            Source::Oci {
                dir: "/tmp/lay".into(),
                tag: None
            }
        );
        let Source::DockerArchive { file, name } =
            Source::parse("docker-archive:/a/b.tar:localhost:5000/x/y:t").unwrap()
        else {
            panic!()
        };
        assert_eq!(file, PathBuf::from("/a/b.tar"));
        assert_eq!(name.unwrap().to_string(), "localhost:5000/x/y:t");
        let Source::Registry(n) =
            Source::parse("https://registry.hub.docker.com/library/centos:centos7").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (n.registry.as_str(), n.repository.as_str(), n.tag.as_deref()),
            ("registry.hub.docker.com", "library/centos", Some("centos7"))
        );
        assert_eq!(
            n.public_path(),
            "registry.hub.docker.com/library/centos:centos7"
        );
        let Source::Registry(n) = Source::parse("docker://busybox:1").unwrap() else {
            panic!()
        };
        assert_eq!(n.to_string(), "docker.io/library/busybox:1");
        assert_eq!(n.api_host(), "registry-1.docker.io");
        let d = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let Source::Registry(n) = Source::parse(&format!("http://127.0.0.1:5000/a/b@{d}")).unwrap()
        else {
            panic!()
        };
        assert!(n.plain_http && n.tag.is_none());
        assert_eq!(n.reference(), d);
        assert_eq!(n.metadata_path(), "127.0.0.1:5000/a/b");
        assert_eq!(n.public_path(), format!("127.0.0.1:5000/a/b:{d}"));
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "centos:7",
            "https://reg.io/a/../b:1",
            "https://reg.io/a/b",
            "https://reg.io/a/b:bad/tag",
            "https://reg.io/a/b:.hidden",
            "https://reg.io/a/b@sha256:abc",
            "oci:",
        ] {
            let e = Source::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("image reference '{bad}'")), "{e}");
        }
    }

    #[test]
    fn the_distribution_grammar() {
        for ok in ["a", "a0", "a.b", "a_b", "a__b", "a---b", "0"] {
            assert!(valid_component(ok), "{ok}");
        }
        for bad in [
            "", "A", "a..b", "a___b", "-a", "a-", ".", "..", "a/b", "a.-b",
        ] {
            assert!(!valid_component(bad), "{bad}");
        }
        for ok in ["reg.io", "127.0.0.1:5000", "localhost", "a-b.c"] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "", ".reg", "reg..io", "-a.io", "reg.io:", "reg.io:x", "a_b.io",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
        let n = ImageName::parse_bare("reg.io/a:1", false).unwrap();
        for bad in [
            "../../../../tmp/x",
            "a/../../b",
            ".x",
            "-x",
            "",
            &"x".repeat(129),
        ] {
            assert!(n.with_tag(bad).is_err(), "{bad}");
        }
        assert_eq!(
            n.with_tag("v1.2_3-rc").unwrap().public_path(),
            "reg.io/a:v1.2_3-rc"
        );
        assert!(ImageName::parse_bare("reg.io/A/b:1", false).is_err());
    }

    #[test]
    fn wildcards_match_whole_tags() {
        let n = ImageName::parse_bare("reg.io/a:21.2.1*", false).unwrap();
        assert!(n.is_wildcard());
        assert!(n.tag_matches("21.2.1"));
        assert!(n.tag_matches("21.2.10-x"));
        assert!(!n.tag_matches("x21.2.1"));
        assert!(wildcard_match("a*b*c", "aXbYc"));
        assert!(!wildcard_match("a*b*c", "aXbYcd"));
        assert!(wildcard_match("*", "anything"));
    }
}
