//! `wharf warm IMAGE…`: pull images into the cache through the configured upstreams, as a client
//! would, without one: every platform of an index by default, or only `--platform os/arch`.

use std::sync::Arc;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde_json::json;

use super::progress;
use crate::mirror::{Mirror, Outcome};
use crate::registry::image::{refs, Platform};
use crate::registry::{Digest, ImageRef, Reference, RepoName};
use crate::upstream::Upstream;

/// Blobs fetched at once per image.
const PARALLEL: usize = 4;

pub struct Warmed {
    pub image: String,
    pub digest: Digest,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub fetched: u64,
}

impl Warmed {
    pub fn json(&self) -> serde_json::Value {
        json!({
            "image": self.image,
            "digest": self.digest.to_string(),
            "manifests": self.manifests,
            "blobs": self.blobs,
            "bytes": self.bytes,
            "fetched_bytes": self.fetched,
        })
    }
}

pub async fn warm(
    mirror: &Arc<Mirror>,
    image: &ImageRef,
    platform: Option<&Platform>,
    json: bool,
) -> Result<Warmed, String> {
    let up = mirror.upstream(&image.registry).ok_or_else(|| {
        format!(
            "{image}: registry {} is not configured (add [upstreams.\"{}\"])",
            image.registry, image.registry
        )
    })?;
    let fail = |e: crate::registry::RegistryError| format!("{image}: {}", e.message);
    let (top, _) = mirror
        .resolve(&up, &image.name, &image.reference)
        .await
        .map_err(fail)?;
    // the image manifests to pull: the one named, or an index's (matching) platforms
    let top_refs = refs(&top.media_type, &top.bytes).map_err(|e| format!("{image}: {e}"))?;
    let mut images = Vec::new();
    if top_refs.manifests.is_empty() {
        images.push(top.clone());
    } else {
        for (d, p) in &top_refs.manifests {
            let wanted = match (platform, p) {
                (None, _) => true,
                (Some(want), Some(have)) => want.matches(have),
                (Some(_), None) => false,
            };
            if wanted {
                let (m, _) = mirror
                    .resolve(&up, &image.name, &Reference::Digest(*d))
                    .await
                    .map_err(fail)?;
                images.push(m);
            }
        }
        if images.is_empty() {
            return Err(format!("{image}: no manifest for the platform asked for"));
        }
    }
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    for m in &images {
        let r = refs(&m.media_type, &m.bytes).map_err(|e| format!("{image}: {e}"))?;
        for b in r.blobs {
            if !blobs.iter().any(|(d, _)| *d == b.0) {
                blobs.push(b);
            }
        }
    }
    let total: u64 = blobs.iter().map(|(_, s)| s).sum();
    let bar = progress(total, &image.to_string(), json);
    let fetched: u64 = stream::iter(blobs.iter().copied())
        .map(|(d, size)| {
            let (mirror, up, name, bar) =
                (mirror.clone(), up.clone(), image.name.clone(), bar.clone());
            async move { fetch(&mirror, &up, &name, d, size, &bar).await }
        })
        .buffer_unordered(PARALLEL)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await
        .map_err(fail)?;
    bar.finish_and_clear();
    Ok(Warmed {
        image: image.to_string(),
        digest: top.digest,
        manifests: images.len() + usize::from(!top_refs.manifests.is_empty()),
        blobs: blobs.len(),
        bytes: total,
        fetched,
    })
}

/// One blob into the cache; returns the bytes fetched for it (0 when it was there already).
async fn fetch(
    mirror: &Arc<Mirror>,
    up: &Arc<Upstream>,
    name: &RepoName,
    digest: Digest,
    size: u64,
    bar: &indicatif::ProgressBar,
) -> Result<u64, crate::registry::RegistryError> {
    let (len, outcome) = mirror.ensure_blob(up, name, &digest).await?;
    bar.inc(size);
    Ok(if outcome == Outcome::Miss { len } else { 0 })
}
