//! What a manifest points at: an index's platform manifests, an image manifest's config and
//! layers. The commands that move whole images (warm, export, import, ls) walk these.

use serde::Deserialize;

use super::media;
use super::reference::Digest;

/// A platform as `os/arch[/variant]` (`linux/arm64/v8`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Result<Platform, String> {
        let mut parts = s.split('/');
        let (Some(os), Some(arch)) = (parts.next(), parts.next()) else {
            return Err(format!("platform {s:?} is not os/arch[/variant]"));
        };
        Ok(Platform {
            os: os.to_owned(),
            architecture: arch.to_owned(),
            variant: parts.next().map(str::to_owned),
        })
    }

    /// Whether a manifest for `other` serves this platform (no variant asked: any variant).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<PlatformJson>,
    /// Where a foreign (non-distributable) layer lives instead of the registry.
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Deserialize)]
struct PlatformJson {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct ManifestJson {
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// What one manifest refers to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refs {
    /// An index's manifests, with their platforms when given.
    pub manifests: Vec<(Digest, Option<Platform>)>,
    /// An image manifest's config and layers, with their sizes.
    pub blobs: Vec<(Digest, u64)>,
}

/// Read what `body` (a manifest of `media_type`) refers to: an index its manifests, an image
/// manifest its config and layers, and nothing else. What a manifest lists here is taken to
/// be in its repository (see `Mirror::link_manifest`), so fields its type does not define are
/// never read (an image manifest with a `manifests` list could otherwise claim anything), nor
/// are foreign layers (with `urls`: the registry does not hold them). A type that is not
/// given (OCI allows that) is told by the fields. Unknown digests are skipped.
pub fn refs(media_type: &str, body: &[u8]) -> Result<Refs, String> {
    let m: ManifestJson =
        serde_json::from_slice(body).map_err(|e| format!("not a manifest: {e}"))?;
    let digest = |d: &Descriptor| Digest::parse(&d.digest).ok();
    let mut out = Refs::default();
    let index = if media::is_manifest_type(media_type) {
        media::is_index(media_type)
    } else {
        m.config.is_none() && !m.manifests.is_empty()
    };
    if index {
        for d in &m.manifests {
            if let Some(dg) = digest(d) {
                let p = d.platform.as_ref().map(|p| Platform {
                    os: p.os.clone(),
                    architecture: p.architecture.clone(),
                    variant: p.variant.clone(),
                });
                out.manifests.push((dg, p));
            }
        }
        return Ok(out);
    }
    for d in m.config.iter().chain(&m.layers) {
        if let Some(dg) = digest(d).filter(|_| d.urls.is_empty()) {
            out.blobs.push((dg, d.size));
        }
    }
    Ok(out)
}

/// What a walk of a manifest graph reached: manifests (the top ones included) and blobs, each
/// once, in the order found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reached {
    pub manifests: Vec<Digest>,
    pub blobs: Vec<Digest>,
}

/// Walk the manifest graph down from `top`: `refs_of` says what a manifest refers to (`None`:
/// it cannot be read, so it is listed but not walked; an error ends the walk). The one walk
/// for links, `ls` and `export`.
pub fn walk<E>(
    top: &[Digest],
    mut refs_of: impl FnMut(&Digest) -> Result<Option<Refs>, E>,
) -> Result<Reached, E> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Reached::default();
    let mut todo: Vec<Digest> = top.iter().rev().copied().collect();
    while let Some(d) = todo.pop() {
        if !seen.insert(d) {
            continue;
        }
        out.manifests.push(d);
        let Some(r) = refs_of(&d)? else { continue };
        todo.extend(r.manifests.iter().rev().map(|(m, _)| *m));
        for (b, _) in r.blobs {
            if seen.insert(b) {
                out.blobs.push(b);
            }
        }
    }
    Ok(out)
}

/// [`walk`] over stored manifests, read leniently: `read` gives a manifest's bytes; one it
/// cannot give, or bytes that are no manifest, are listed and not walked.
pub fn walk_stored(top: &[Digest], read: impl Fn(&Digest) -> Option<Vec<u8>>) -> Reached {
    let reached = walk(top, |d| {
        let refs = read(d).and_then(|b| {
            let t = media::manifest_type(&b).unwrap_or_default();
            refs(&t, &b).ok()
        });
        Ok::<_, std::convert::Infallible>(refs)
    });
    let Ok(reached) = reached;
    reached
}

/// Every manifest and blob that the manifests `top` reach, `top` included (see
/// [`walk_stored`]).
pub fn reach(top: &[Digest], read: impl Fn(&Digest) -> Option<Vec<u8>>) -> Vec<Digest> {
    let Reached {
        mut manifests,
        blobs,
    } = walk_stored(top, read);
    manifests.extend(blobs);
    manifests
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_indexes_and_images() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let index = format!(
            r#"{{"manifests":[{{"digest":"{a}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},{{"digest":"{b}","size":1}}]}}"#
        );
        let r = refs(media::OCI_INDEX, index.as_bytes()).unwrap();
        assert_eq!(r.manifests.len(), 2);
        let arm = r.manifests[0].1.clone().unwrap();
        assert!(Platform::parse("linux/arm64").unwrap().matches(&arm));
        assert!(Platform::parse("linux/arm64/v8").unwrap().matches(&arm));
        assert!(!Platform::parse("linux/amd64").unwrap().matches(&arm));
        let image = format!(
            r#"{{"config":{{"digest":"{a}","size":5}},"layers":[{{"digest":"{b}","size":7}}]}}"#
        );
        let r = refs(media::OCI_MANIFEST, image.as_bytes()).unwrap();
        assert_eq!(r.blobs.len(), 2);
        assert_eq!(r.blobs[1].1, 7);
        assert!(Platform::parse("linux").is_err());
    }

    #[test]
    fn a_manifest_refers_only_to_what_its_type_defines() {
        let (a, b, c) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
            format!("sha256:{}", "c".repeat(64)),
        );
        // an image manifest smuggling a `manifests` list, and a foreign layer
        let image = format!(
            r#"{{"config":{{"digest":"{a}","size":5}},"layers":[{{"digest":"{b}","size":7,"urls":["https://x/b"]}}],"manifests":[{{"digest":"{c}","size":1}}]}}"#
        );
        for t in [media::OCI_MANIFEST, media::DOCKER_MANIFEST, ""] {
            let r = refs(t, image.as_bytes()).unwrap();
            assert!(r.manifests.is_empty(), "{t}: {r:?}");
            assert_eq!(r.blobs, vec![(Digest::parse(&a).unwrap(), 5)], "{t}");
        }
        // an index with layers of its own
        let index = format!(
            r#"{{"manifests":[{{"digest":"{c}","size":1}}],"layers":[{{"digest":"{b}","size":7}}]}}"#
        );
        for t in [media::OCI_INDEX, ""] {
            let r = refs(t, index.as_bytes()).unwrap();
            assert_eq!(r.manifests.len(), 1, "{t}");
            assert!(r.blobs.is_empty(), "{t}: {r:?}");
        }
    }
}
