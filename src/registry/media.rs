//! Manifest media types and content negotiation.
//!
//! A manifest's type is part of what a client asked for (`Accept`), so wharf must know the type of
//! everything it serves. It reads the type from the manifest itself rather than keeping it beside
//! the content, which keeps the store purely content-addressed.

use std::collections::HashSet;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const BLOB: &str = "application/octet-stream";

/// What wharf asks an upstream for when the client did not say: every current manifest type.
pub const ALL_MANIFESTS: [&str; 4] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
];

/// Largest manifest wharf accepts from an upstream (distribution's own limit).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// The media type of a manifest, from its `mediaType` field or, when that is absent (allowed for
/// OCI manifests), from its shape.
pub fn manifest_type(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        manifests: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
    }
    let p: Probe = serde_json::from_slice(body).ok()?;
    if let Some(t) = p.media_type {
        return Some(t);
    }
    Some(
        match (p.schema_version, p.manifests, p.config) {
            (Some(1), _, _) => DOCKER_MANIFEST_V1_SIGNED,
            (_, Some(_), _) => OCI_INDEX,
            (_, _, Some(_)) => OCI_MANIFEST,
            _ => return None,
        }
        .to_owned(),
    )
}

/// Docker's unsigned schema 1 manifest (old registries).
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// Whether `t` is a manifest media type wharf serves.
pub fn is_manifest_type(t: &str) -> bool {
    ALL_MANIFESTS.contains(&t) || t == DOCKER_MANIFEST_V1_SIGNED || t == DOCKER_MANIFEST_V1
}

/// Image indexes: what a multi-platform tag resolves to for clients that accept one.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// The media types a client accepts, from all of its `Accept` headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accept(Vec<String>);

impl Accept {
    /// Parse every `Accept` header value (comma-separated lists, parameters dropped).
    /// Linear in the headers' length: a client may send a megabyte of them.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut types = Vec::new();
        let mut seen = HashSet::new();
        for v in values {
            for part in v.split(',') {
                let t = part.split(';').next().unwrap_or("").trim();
                if !t.is_empty() && seen.insert(t) {
                    types.push(t.to_owned());
                }
            }
        }
        Accept(types)
    }

    /// No Accept header, or `*/*`, accepts anything.
    pub fn accepts(&self, media_type: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|t| t == "*/*" || t == media_type)
    }

    /// What to send upstream: the client's list, or every manifest type when it named none.
    pub fn for_upstream(&self) -> String {
        self.upstream_types().join(", ")
    }

    /// A client that names no type (no Accept, or `*/*` alone: curl's default) takes any
    /// manifest, so the upstream is offered every type wharf serves. Passed on as is, `*/*`
    /// makes distribution answer a re-signed schema1 manifest for a schema2 tag.
    fn upstream_types(&self) -> Vec<&str> {
        if self.0.iter().all(|t| t == "*/*") {
            ALL_MANIFESTS.to_vec()
        } else {
            self.0.iter().map(String::as_str).collect()
        }
    }

    /// A stable name for what this client asks the upstream for: a tag resolves per such set.
    pub fn key(&self) -> String {
        let mut types = self.upstream_types();
        types.sort_unstable();
        types.join(",")
    }

    /// Whether a tag that resolved to `media_type` for clients with `key` is what the upstream
    /// would answer this client too: the client accepts the type, and the answer is an index or
    /// came from a request that offered every index type this client accepts (so the upstream
    /// had the chance to answer with an index and did not).
    pub fn can_reuse(&self, key: &str, media_type: &str) -> bool {
        if !self.accepts(media_type) {
            return false;
        }
        if is_index(media_type) {
            return true;
        }
        let then = Accept::parse(key.split(','));
        [OCI_INDEX, DOCKER_MANIFEST_LIST]
            .iter()
            .all(|t| !self.accepts(t) || then.accepts(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_types() {
        assert_eq!(
            manifest_type(br#"{"schemaVersion":2,"mediaType":"x/y"}"#).as_deref(),
            Some("x/y")
        );
        assert_eq!(
            manifest_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(
            manifest_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(manifest_type(b"not json"), None);
    }

    #[test]
    fn negotiates() {
        let a = Accept::parse([
            "application/vnd.oci.image.index.v1+json, application/json;q=0.5",
            DOCKER_MANIFEST,
        ]);
        assert!(a.accepts(OCI_INDEX));
        assert!(a.accepts(DOCKER_MANIFEST));
        assert!(!a.accepts(OCI_MANIFEST));
        assert!(Accept::parse(["*/*"]).accepts(OCI_MANIFEST));
        assert!(Accept::default().accepts(OCI_MANIFEST));
        assert!(Accept::default().for_upstream().contains(DOCKER_MANIFEST));
        // curl's `*/*` alone is every manifest type, and the same tag mapping as no Accept
        assert_eq!(
            Accept::parse(["*/*"]).for_upstream(),
            ALL_MANIFESTS.join(", ")
        );
        assert_eq!(Accept::parse(["*/*"]).key(), Accept::default().key());
        let containerd = Accept::parse([OCI_INDEX, "*/*"]);
        assert_eq!(containerd.for_upstream(), format!("{OCI_INDEX}, */*"));
        // the same set in another order is the same key
        assert_eq!(
            Accept::parse([DOCKER_MANIFEST, OCI_INDEX]).key(),
            Accept::parse([&format!("{OCI_INDEX},{DOCKER_MANIFEST}")[..]]).key()
        );
    }

    /// Found reading `parse` for its fuzz target (fuzz/fuzz_targets/accept.rs): each type was
    /// compared with every one kept before it, so the megabyte of headers a request may carry
    /// (some 130,000 distinct short types) took minutes of CPU to parse.
    #[test]
    fn many_types_take_linear_time() {
        let types: Vec<String> = (0..130_000).map(|i| format!("a/{i:x}")).collect();
        let header = types.join(",");
        let started = std::time::Instant::now();
        let a = Accept::parse([header.as_str(), "a/0, a/1"]);
        assert_eq!(a.0, types);
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn reuse_across_accept_sets() {
        let docker = Accept::parse([DOCKER_MANIFEST]);
        let everything = Accept::default();
        let containerd = Accept::parse(["*/*", OCI_INDEX]);
        // an index answers anyone who accepts it
        assert!(containerd.can_reuse(&docker.key(), OCI_INDEX));
        assert!(!docker.can_reuse(&everything.key(), OCI_INDEX));
        // a single manifest fetched by a client that took no index is no answer for one that does
        assert!(!everything.can_reuse(&docker.key(), DOCKER_MANIFEST));
        // but one fetched while offering every index type is: the tag has no index
        assert!(docker.can_reuse(&everything.key(), DOCKER_MANIFEST));
        assert!(containerd.can_reuse(&everything.key(), DOCKER_MANIFEST));
    }
}
