//! Manifests: small, so fetched whole — one upstream fetch per key however many clients ask —
//! verified against their digest and stored before they are served. Tags are revalidated with a
//! HEAD (free on Docker Hub) once their TTL has passed, and served stale while the upstream
//! cannot be asked.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

use super::{digest_headers, is_unavailable, text_value, Body, Mirror, Outcome, Reply};
use crate::cache::flight::Full;
use crate::cache::tags::Share;
use crate::cache::{ContentStore, Flights, Kind, MemoryTier, TagEntry, TagRecord, Use};
use crate::metrics::METRICS;
use crate::registry::image;
use crate::registry::media::{self, Accept};
use crate::registry::{Cause, Digest, ErrorCode, Reference, RegistryError, RepoName, Tag};
use crate::upstream::Upstream;

/// A manifest with what a client needs to know about it.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: Arc<str>,
    pub bytes: Bytes,
}

impl Manifest {
    fn from_bytes(digest: Digest, bytes: Bytes, fallback_type: Option<&str>) -> Manifest {
        let media_type = media::manifest_type(&bytes)
            .or_else(|| fallback_type.map(str::to_owned))
            .unwrap_or_else(|| media::BLOB.to_owned());
        Manifest {
            digest,
            media_type: media_type.into(),
            bytes,
        }
    }

    /// Keep it in the memory tier, with its media type.
    fn remember(&self, memory: &MemoryTier) {
        let t = Some(self.media_type.clone());
        memory.insert(Kind::Manifest, self.digest, self.bytes.clone(), t);
    }
}

/// The reply carrying a manifest.
pub(super) fn manifest_reply(m: Manifest, outcome: Outcome) -> Reply {
    let mut headers = Vec::with_capacity(6);
    headers.push((header::CONTENT_TYPE, text_value(&*m.media_type)));
    headers.push((header::CONTENT_LENGTH, HeaderValue::from(m.bytes.len())));
    headers.extend(digest_headers(&m.digest));
    if outcome == Outcome::Stale {
        headers.push((
            header::WARNING,
            HeaderValue::from_static("110 wharf \"Response is Stale\""),
        ));
    }
    Reply {
        status: StatusCode::OK,
        headers,
        body: Body::Bytes(m.bytes),
        outcome,
    }
}

/// The newest mapping of a tag that `ok` accepts, with its `Accept` key.
fn newest(record: &TagRecord, ok: impl Fn(&str, &TagEntry) -> bool) -> Option<(&str, &TagEntry)> {
    record
        .by_accept
        .iter()
        .filter(|(k, e)| ok(k, e))
        .max_by_key(|(_, e)| e.checked)
        .map(|(k, e)| (k.as_str(), e))
}

/// The newest mapping of a tag that may answer a client accepting `accept`.
fn reusable<'r>(record: &'r TagRecord, accept: &Accept) -> Option<(&'r str, &'r TagEntry)> {
    newest(record, |k, e| accept.can_reuse(k, &e.media_type))
}

/// Longest wait for an upstream to confirm a tag wharf could serve stale.
const REVALIDATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

pub(super) type ManifestResult = Result<Manifest, RegistryError>;

/// Whether this instance shares the tag mapping an answer gave: not when the source (a
/// cluster peer that asked the upstream) shares it itself, so a peer's answer never
/// refreshes the shared record; yes when this instance asked the upstream, owner or not.
fn share(shared_by_source: bool) -> Share {
    if shared_by_source {
        Share::No
    } else {
        Share::Yes
    }
}

/// What the policy for manifests keeps.
pub(super) struct ManifestState {
    /// Manifest fetches in flight: one per key, shared by all who wait.
    pub(super) fetches: Flights<String, ManifestResult>,
    /// Tag revalidations (HEADs) in flight: one per tag mapping, shared by all who wait.
    pub(super) revalidations: Flights<String, Result<bool, RegistryError>>,
    /// Tags an upstream said it does not have, believed for `negative_ttl`.
    pub(super) missing_tags: moka::sync::Cache<(String, String, String), ()>,
}

impl ManifestState {
    pub(super) fn new(max_fetches: usize, negative_ttl: std::time::Duration) -> ManifestState {
        ManifestState {
            fetches: Flights::new(max_fetches),
            revalidations: Flights::new(max_fetches),
            missing_tags: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(negative_ttl)
                .build(),
        }
    }
}

impl Mirror {
    pub(super) async fn manifest(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        reference: &Reference,
        accept: &Accept,
    ) -> Result<Reply, RegistryError> {
        let (m, outcome) = match reference {
            Reference::Digest(d) => self.manifest_by_digest(up, name, d).await?,
            Reference::Tag(t) => self.manifest_by_tag(up, name, t, accept).await?,
        };
        self.learn_sizes(up, name, &m);
        Ok(manifest_reply(m, outcome))
    }

    /// A manifest held in the memory tier.
    pub(super) fn memory_manifest(&self, digest: &Digest) -> Option<Manifest> {
        let c = self.memory.get(Kind::Manifest, digest)?;
        self.cache.touched(Kind::Manifest, digest);
        Some(match c.media_type {
            Some(media_type) => Manifest {
                digest: *digest,
                media_type,
                bytes: c.bytes,
            },
            None => Manifest::from_bytes(*digest, c.bytes, None),
        })
    }

    /// The manifest `reference` names, as a client accepting every manifest type gets it.
    pub async fn resolve(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<(Manifest, Outcome), RegistryError> {
        let found = match reference {
            Reference::Digest(d) => self.manifest_by_digest(up, name, d).await?,
            Reference::Tag(t) => {
                self.manifest_by_tag(up, name, t, &Accept::default())
                    .await?
            }
        };
        self.learn_sizes(up, name, &found.0);
        Ok(found)
    }

    /// A manifest by digest: memory, disk, or one upstream fetch verified against the digest.
    async fn manifest_by_digest(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<(Manifest, Outcome), RegistryError> {
        if let Some(m) = self.local_manifest(digest).await? {
            self.vouch(up, name, Kind::Manifest, digest).await?;
            self.adopt_shared(up, name, &m).await;
            return Ok(m);
        }
        let key = format!("{}/{}@{digest}", up.registry, name);
        let (me, up, name, d) = (self.clone(), up.clone(), name.clone(), *digest);
        self.fetch_once(key, async move {
            me.fetch_manifest(&up, &name, &d.to_string(), &Accept::default(), Some(d))
                .await
                .map(|(m, _)| m)
        })
        .await
    }

    /// Run `work` as the one upstream fetch for `key`, or share the one already in flight.
    async fn fetch_once(
        &self,
        key: String,
        work: impl std::future::Future<Output = ManifestResult> + Send + 'static,
    ) -> Result<(Manifest, Outcome), RegistryError> {
        let (result, joined) = self
            .manifests
            .fetches
            .run(key, || work)
            .await
            .map_err(|Full(n)| {
                RegistryError::busy(
                    format!(
                        "wharf is fetching {n} manifests already (max_manifest_fetches); try again shortly"
                    ),
                    1,
                )
            })?;
        let m = result.unwrap_or_else(|| Err(RegistryError::local("manifest fetch failed")))?;
        Ok((
            m,
            if joined {
                Outcome::Coalesced
            } else {
                Outcome::Miss
            },
        ))
    }

    /// A stored manifest, from memory or disk.
    async fn local_manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Manifest, Outcome)>, RegistryError> {
        if let Some(m) = self.memory_manifest(digest) {
            return Ok(Some((m, Outcome::HitMemory)));
        }
        let (disk, d) = (self.cache.disk.clone(), *digest);
        let cannot = |e| RegistryError::local(format!("cannot read cached manifest {digest}: {e}"));
        let opened = tokio::task::spawn_blocking(move || disk.open(Kind::Manifest, &d, Use::Serve))
            .await
            .map_err(|e| RegistryError::local(format!("cache task failed: {e}")))?
            .map_err(cannot)?;
        let Some(object) = opened else {
            return self.shared_manifest(digest).await;
        };
        let len = object.len.min(media::MAX_MANIFEST_BYTES as u64) as usize;
        let bytes = object.read_at(0, len).await.map_err(cannot)?;
        self.cache.touched(Kind::Manifest, digest);
        let m = Manifest::from_bytes(*digest, bytes, None);
        m.remember(&self.memory);
        Ok(Some((m, Outcome::HitDisk)))
    }

    /// A manifest found in the shared store only: copied onto this disk (where its digest is
    /// checked again), then served.
    async fn shared_manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Manifest, Outcome)>, RegistryError> {
        let (Some(shared), disk, d) = (self.cache.shared.clone(), self.cache.disk.clone(), *digest)
        else {
            return Ok(None);
        };
        let read = tokio::task::spawn_blocking(move || copy_shared_manifest(&*shared, &disk, &d))
            .await
            .map_err(|e| RegistryError::local(format!("cache task failed: {e}")))?;
        let (bytes, copied) = match read {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => {
                // a bucket that cannot be read is no reason to fail: the upstream is asked
                tracing::warn!("cannot read manifest {digest} from the shared store: {e}");
                return Ok(None);
            }
        };
        if copied {
            self.cache
                .quota
                .added(Kind::Manifest, *digest, bytes.len() as u64);
        }
        self.cache.touched(Kind::Manifest, digest);
        let m = Manifest::from_bytes(*digest, Bytes::from(bytes), None);
        m.remember(&self.memory);
        Ok(Some((m, Outcome::HitShared)))
    }

    /// The manifest a tag names, if a fresh mapping that answers this client and the manifest
    /// are both in memory: the hot path of pulls by tag (every pull starts with one, kubelets
    /// ask again at each pod start). Everything else is [`Mirror::manifest_by_tag`]'s.
    pub(super) fn memory_tag(
        &self,
        up: &Upstream,
        name: &RepoName,
        tag: &Tag,
        accept: &Accept,
    ) -> Option<Manifest> {
        let record = self.cache.tags.get_cached(&up.registry, name, tag)?;
        let (_, entry) = reusable(&record, accept)?;
        if !self.is_fresh(up, name, tag, entry) {
            return None;
        }
        self.memory_manifest(&entry.digest)
    }

    /// A manifest by tag. A mapping that answers this client ([`Accept::can_reuse`]) is served
    /// while fresh, revalidated with a HEAD after its TTL, and served stale if the upstream
    /// cannot be asked; otherwise the tag is fetched. With the upstream unavailable (or wharf
    /// offline), any cached mapping the client accepts stands in.
    async fn manifest_by_tag(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        tag: &Tag,
        accept: &Accept,
    ) -> Result<(Manifest, Outcome), RegistryError> {
        let record = self.tag_record(up, name, tag).await;
        let reusable = reusable(&record, accept);
        // what may stand in when the upstream cannot be asked: best the exact answer
        let fallback = reusable
            .or_else(|| newest(&record, |_, e| accept.accepts(&e.media_type)))
            .map(|(_, e)| e);
        if up.offline {
            let found = match fallback {
                Some(e) => self.tagged_local(up, name, e).await?,
                None => None,
            };
            return found.ok_or_else(|| {
                RegistryError::not_found(
                    ErrorCode::ManifestUnknown,
                    format!("{name}:{tag} is not cached, and wharf is offline"),
                )
            });
        }
        if let Some((key, entry)) = reusable {
            match self
                .check_mapping(up, name, tag, accept, key, entry)
                .await?
            {
                Mapping::Holds => {
                    if let Some(found) = self.tagged_local(up, name, entry).await? {
                        return Ok(found);
                    }
                }
                Mapping::Moved => {}
                Mapping::Unconfirmed(e) => return self.stale(up, name, tag, fallback, e).await,
            }
        }
        match self.fetch_tag(up, name, tag, accept).await {
            Err(e) if is_unavailable(&e) => self.stale(up, name, tag, fallback, e).await,
            Err(e) => Err(self.tag_missing(up, name, tag, e)),
            ok => ok,
        }
    }

    /// What wharf knows of a tag: from memory, else from the tag index on disk.
    async fn tag_record(
        self: &Arc<Self>,
        up: &Upstream,
        name: &RepoName,
        tag: &Tag,
    ) -> Arc<TagRecord> {
        if let Some(r) = self.cache.tags.get_cached(&up.registry, name, tag) {
            return r;
        }
        let (me, r, n, t) = (self.clone(), up.registry.clone(), name.clone(), tag.clone());
        tokio::task::spawn_blocking(move || me.cache.tags.get(&r, &n, &t))
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// The one freshness rule: a mapping is served without asking while younger than its
    /// tag's TTL.
    fn is_fresh(&self, up: &Upstream, name: &RepoName, tag: &Tag, entry: &TagEntry) -> bool {
        let ttl = self
            .freshness
            .tag_ttl(&up.registry, up.tag_ttl, name.as_str(), tag.as_str());
        entry.is_fresh(ttl)
    }

    /// Whether the mapping `key` of `tag` still holds: fresh, or confirmed by the upstream
    /// now. An upstream that cannot be asked (or just failed) leaves it unconfirmed.
    async fn check_mapping(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        tag: &Tag,
        accept: &Accept,
        key: &str,
        entry: &TagEntry,
    ) -> Result<Mapping, RegistryError> {
        if self.is_fresh(up, name, tag, entry) {
            return Ok(Mapping::Holds);
        }
        if up.recently_failed() {
            let e = RegistryError::upstream_failed("the upstream failed moments ago");
            return Ok(Mapping::Unconfirmed(e));
        }
        match self
            .revalidate_once(up, name, tag, accept, key, entry)
            .await
        {
            Ok(true) => Ok(Mapping::Holds),
            Ok(false) => Ok(Mapping::Moved),
            Err(e) if is_unavailable(&e) => Ok(Mapping::Unconfirmed(e)),
            Err(e) => Err(self.tag_missing(up, name, tag, e)),
        }
    }

    /// Fetch what `tag` is now for this client (one fetch however many ask), and record it;
    /// unless the upstream said it has no such tag within `negative_ttl`.
    async fn fetch_tag(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        tag: &Tag,
        accept: &Accept,
    ) -> Result<(Manifest, Outcome), RegistryError> {
        let missing_key = (up.registry.clone(), name.to_string(), tag.to_string());
        if self.manifests.missing_tags.contains_key(&missing_key) {
            return Err(RegistryError::not_found(
                ErrorCode::ManifestUnknown,
                format!(
                    "{name}:{tag} is not known upstream (checked in the last {:?})",
                    self.freshness.negative
                ),
            ));
        }
        let accept_key = accept.key();
        let key = format!("{}/{}:{}#{}", up.registry, name, tag, accept_key);
        let (me, up, name, tag, accept) = (
            self.clone(),
            up.clone(),
            name.clone(),
            tag.clone(),
            accept.clone(),
        );
        self.fetch_once(key, async move {
            let (m, share) = me
                .fetch_manifest(&up, &name, tag.as_str(), &accept, None)
                .await?;
            let entry = TagEntry::new(&m.digest, &m.media_type);
            me.put_tag(&up, &name, &tag, &accept_key, entry, share)
                .await;
            Ok(m)
        })
        .await
    }

    /// The manifest a tag entry of `name` names, if stored.
    async fn tagged_local(
        self: &Arc<Self>,
        up: &Upstream,
        name: &RepoName,
        entry: &TagEntry,
    ) -> Result<Option<(Manifest, Outcome)>, RegistryError> {
        let found = self.local_manifest(&entry.digest).await?;
        if let Some(found) = &found {
            self.adopt_shared(up, name, found).await;
        }
        Ok(found)
    }

    /// A manifest of `name` (its tag's, or a digest vouched for) that this instance has just
    /// read from the shared store: `name` holds it and what it refers to, as if this instance
    /// had fetched it, so that its blobs need no upstream to vouch for them (an instance with
    /// an empty disk, the upstream down).
    async fn adopt_shared(
        self: &Arc<Self>,
        up: &Upstream,
        name: &RepoName,
        found: &(Manifest, Outcome),
    ) {
        let (m, outcome) = found;
        if *outcome == Outcome::HitShared {
            self.link_manifest(up, name, m.digest, &m.media_type, &m.bytes)
                .await;
        }
    }

    /// The upstream could not be asked: serve the last known mapping, however old, or fail
    /// with the upstream's error (429 keeps its Retry-After).
    async fn stale(
        self: &Arc<Self>,
        up: &Upstream,
        name: &RepoName,
        tag: &Tag,
        known: Option<&TagEntry>,
        error: RegistryError,
    ) -> Result<(Manifest, Outcome), RegistryError> {
        let Some(entry) = known else {
            return Err(error);
        };
        match self.tagged_local(up, name, entry).await? {
            Some((m, _)) => {
                tracing::warn!("serving {name}:{tag} stale ({}): {error}", entry.digest);
                Ok((m, Outcome::Stale))
            }
            None => Err(error),
        }
    }

    /// Remember an upstream's 404 for a tag for a little while.
    fn tag_missing(
        &self,
        up: &Upstream,
        name: &RepoName,
        tag: &Tag,
        error: RegistryError,
    ) -> RegistryError {
        if error.cause == Cause::NotFound {
            let key = (up.registry.clone(), name.to_string(), tag.to_string());
            self.manifests.missing_tags.insert(key, ());
        }
        error
    }

    /// Whether the mapping `key` of `tag` still holds, asked of the upstream once however
    /// many clients wait for the answer; a mapping that holds is fresh again. With too many
    /// revalidations in flight the upstream counts as one that cannot be asked.
    async fn revalidate_once(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        name: &RepoName,
        tag: &Tag,
        accept: &Accept,
        key: &str,
        entry: &TagEntry,
    ) -> Result<bool, RegistryError> {
        let flight = format!("{}/{name}:{tag}#{key}@{}", up.registry, entry.digest);
        let (me, up, name, tag, accept, key, entry) = (
            self.clone(),
            up.clone(),
            name.clone(),
            tag.clone(),
            accept.clone(),
            key.to_owned(),
            entry.clone(),
        );
        let work = || async move {
            let holds = me
                .revalidate(&up, &name, &tag, &accept, &entry.digest)
                .await;
            if let Ok((true, share)) = holds {
                let fresh = TagEntry::new(&entry.digest, &entry.media_type);
                me.put_tag(&up, &name, &tag, &key, fresh, share).await;
            }
            holds.map(|(holds, _)| holds)
        };
        match self.manifests.revalidations.run(flight, work).await {
            Ok((Some(holds), _)) => holds,
            Ok((None, _)) => Err(RegistryError::local("the tag's revalidation failed")),
            Err(Full(n)) => Err(RegistryError::busy(
                format!("wharf is revalidating {n} tags already (max_manifest_fetches)"),
                1,
            )),
        }
    }

    /// Ask the upstream (HEAD) whether `tag` still points at `digest`. The answer is optional
    /// (a stale mapping can be served instead), so it gets [`REVALIDATE_TIMEOUT`], not the
    /// upstream's full read timeout; running out of it counts as an upstream failure.
    async fn revalidate(
        &self,
        up: &Upstream,
        name: &RepoName,
        tag: &Tag,
        accept: &Accept,
        digest: &Digest,
    ) -> Result<(bool, Share), RegistryError> {
        let accept = accept.for_upstream();
        let head = up.manifest_head(name, tag.as_str(), &accept);
        let found = match tokio::time::timeout(REVALIDATE_TIMEOUT, head).await {
            Ok(r) => r?,
            Err(_) => {
                up.note_failure();
                return Err(RegistryError::upstream_timed_out(format!(
                    "the upstream did not confirm {name}:{tag} within {REVALIDATE_TIMEOUT:?}"
                )));
            }
        };
        Ok((
            found.digest.as_ref() == Some(digest),
            share(found.shared_by_source),
        ))
    }

    async fn put_tag(
        self: &Arc<Self>,
        up: &Upstream,
        name: &RepoName,
        tag: &Tag,
        key: &str,
        entry: TagEntry,
        share: Share,
    ) {
        let (registry, n, t, k) = (
            up.registry.clone(),
            name.clone(),
            tag.clone(),
            key.to_owned(),
        );
        let result = self
            .blocking(move |m| m.cache.tags.put(&registry, &n, &t, &k, entry, share))
            .await;
        if let Err(e) = result {
            tracing::error!("cannot record tag {name}:{tag}: {e}");
        }
    }

    /// GET a manifest from upstream, check it, store it. `expected` is the digest asked for.
    async fn fetch_manifest(
        self: &Arc<Self>,
        up: &Upstream,
        name: &RepoName,
        reference: &str,
        accept: &Accept,
        expected: Option<Digest>,
    ) -> Result<(Manifest, Share), RegistryError> {
        let answer = up.manifest(name, reference, &accept.for_upstream()).await?;
        let share = share(answer.shared_by_source);
        let announced = answer.digest.as_deref();
        let content_type = answer.media_type.as_deref();
        let bytes = answer.bytes.clone();
        let digest = Digest::of(&bytes);
        METRICS.bytes_fetched.inc_by(bytes.len() as u64);
        let mismatch = |claimed: &str| {
            METRICS.verification_failures.inc();
            RegistryError::upstream_failed(format!(
                "upstream manifest {name}:{reference} hashes to {digest}, not {claimed}; not cached"
            ))
        };
        if let Some(want) = expected {
            if want != digest {
                return Err(mismatch(&want.to_string()));
            }
        }
        if let Some(a) = announced.filter(|a| a.starts_with("sha256:")) {
            if a != digest.to_string() {
                return Err(mismatch(a));
            }
        }
        // What the upstream calls a manifest must be one: its Content-Type, and the type the
        // body gives itself (served as the Content-Type from wharf's own origin).
        let content_type = content_type.map(|t| t.split(';').next().unwrap_or("").trim());
        if let Some(t) = content_type.filter(|t| !media::is_manifest_type(t)) {
            return Err(RegistryError::upstream_failed(format!(
                "upstream answered {name}:{reference} as {t:?}, which is no manifest type; not cached"
            )));
        }
        let m = Manifest::from_bytes(digest, bytes, content_type);
        if !media::is_manifest_type(&m.media_type) {
            return Err(RegistryError::upstream_failed(format!(
                "upstream manifest {name}:{reference} calls itself {:?}, which is no manifest type; not cached",
                m.media_type
            )));
        }
        let (d, b) = (m.digest, m.bytes.clone());
        let stored = self
            .blocking(move |me| me.cache.store.write(Kind::Manifest, &d, &b))
            .await;
        match stored {
            Ok(()) => self
                .cache
                .quota
                .added(Kind::Manifest, m.digest, m.bytes.len() as u64),
            Err(e) => tracing::error!("cannot store manifest {}: {e}", m.digest),
        }
        m.remember(&self.memory);
        self.link_manifest(up, name, m.digest, &m.media_type, &m.bytes)
            .await;
        Ok((m, share))
    }

    /// Remember the sizes an image manifest of `name` gives its config and layers: a fill of
    /// one of them for this repository then knows its length before the upstream says it (or
    /// when it never does). Kept per repository: a manifest elsewhere that gives a layer a
    /// wrong size must not break the layer's fills here.
    fn learn_sizes(&self, up: &Upstream, name: &RepoName, m: &Manifest) {
        if media::is_index(&m.media_type) {
            return;
        }
        let Ok(refs) = image::refs(&m.media_type, &m.bytes) else {
            return;
        };
        let empty = Digest::of(b"");
        for (d, size) in refs.blobs {
            // schema1 descriptors have no size (read as 0); only the empty blob is that small
            if size > 0 || d == empty {
                self.blobs
                    .sizes
                    .insert((format!("{}/{name}", up.registry), d), size);
            }
        }
    }
}

/// What a known mapping of a tag comes to.
enum Mapping {
    /// Fresh, or the upstream confirmed it.
    Holds,
    /// The upstream names another manifest now.
    Moved,
    /// Not fresh, and the upstream could not be asked: the reason.
    Unconfirmed(RegistryError),
}

/// Read manifest `d` from the shared store, check it, and copy it onto `disk`: its bytes, and
/// whether the copy was made. The bucket's copy is checked before anything is served or kept;
/// one that is too big or wrong (it can only have come from outside wharf) is removed from
/// the bucket. Blocking.
fn copy_shared_manifest(
    shared: &dyn ContentStore,
    disk: &crate::cache::DiskStore,
    d: &Digest,
) -> std::io::Result<Option<(Vec<u8>, bool)>> {
    let Some(object) = shared.open(Kind::Manifest, d, Use::Serve)? else {
        return Ok(None);
    };
    let max = media::MAX_MANIFEST_BYTES as u64;
    let mut bytes = Vec::new();
    if object.len <= max {
        let mut reader = std::io::Read::take(object.reader()?, max + 1);
        std::io::Read::read_to_end(&mut reader, &mut bytes)?;
    }
    if object.len > max || Digest::of(&bytes) != *d {
        tracing::error!("the shared store's copy of manifest {d} is damaged: removed");
        shared.remove(Kind::Manifest, d)?;
        return Ok(None);
    }
    match disk.write(Kind::Manifest, d, &bytes) {
        Ok(()) => Ok(Some((bytes, true))),
        Err(e) => {
            tracing::warn!("cannot copy manifest {d} from the shared store: {e}");
            Ok(Some((bytes, false)))
        }
    }
}
