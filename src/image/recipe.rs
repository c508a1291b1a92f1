//! DUCC's wishlist ("recipe") file: which images to convert.
//!
//! ```yaml
//! version: 1
//! user: cvmfsunpacker
//! cvmfs_repo: 'unpacked.example.org'
//! output_format: '$(scheme)://$(registry)/$(repository)_thin:$(tag)'
//! input:
//!   - 'https://registry.hub.docker.com/library/centos:centos7'
//!   - 'https://registry.hub.docker.com/atlas/analysisbase:21.2.1*'
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::image::Error as ImageError;
use crate::image::reference::Source;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub version: u32,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub cvmfs_repo: Option<String>,
    #[serde(default)]
    pub output_format: Option<String>,
    pub input: Vec<String>,
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Recipe, ImageError> {
        let bad = |reason: String| ImageError::Recipe {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let r: Recipe = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if r.version != 1 {
            return Err(bad(format!(
                "version {} is not supported (only 1)",
                r.version
            )));
        }
        Ok(r)
    }

    /// The inputs as sources; an error names the recipe and the bad line.
    pub fn sources(&self, path: &Path) -> Result<Vec<Source>, ImageError> {
        self.input
            .iter()
            .map(|i| {
                Source::parse(i).map_err(|e| ImageError::Recipe {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ducc_example_and_names_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.yaml");
        std::fs::write(
            &p,
            "version: 1\nuser: cvmfsunpacker\ncvmfs_repo: 'unpacked.example.org'\n\
             output_format: '$(scheme)://$(registry)/$(repository)_thin:$(tag)'\n\
             input:\n  - 'https://registry.hub.docker.com/library/centos:centos7'\n\
             \x20 - 'https://registry.hub.docker.com/atlas/analysisbase:21.2.1*'\n",
        )
        .unwrap();
        let r = Recipe::load(&p).unwrap();
        assert_eq!(r.sources(&p).unwrap().len(), 2);
        std::fs::write(&p, "version: 1\ninput:\n  - 'centos:7'\n").unwrap();
        let e = Recipe::load(&p)
            .unwrap()
            .sources(&p)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "recipe {}: image reference 'centos:7'",
                p.display()
            )),
            "{e}"
        );
        std::fs::write(&p, "version: 1\ninputs: []\n").unwrap();
        assert!(
            Recipe::load(&p)
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
    }
}
