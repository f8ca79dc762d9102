//! An in-memory [`Remote`] for unit tests of the pull policy: it holds manifests and blobs,
//! can be taken down, can lie about a manifest's bytes, and records what it was asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{BlobBody, Head, Listing, ManifestBody, Referrers, Remote};
use crate::registry::{Digest, ErrorCode, RegistryError, RepoName};

#[derive(Default)]
pub struct FakeRemote {
    /// (repository, tag or digest) → (bytes, media type)
    manifests: Mutex<HashMap<(String, String), (Bytes, String)>>,
    blobs: Mutex<HashMap<Digest, Bytes>>,
    down: AtomicBool,
    asked: Mutex<Vec<String>>,
}

impl FakeRemote {
    /// Hold `bytes` as manifest `tag` of `repo` (and under its digest); returns the digest.
    pub fn put_manifest(&self, repo: &str, tag: &str, bytes: &[u8], media_type: &str) -> Digest {
        let d = Digest::of(bytes);
        let value = (Bytes::copy_from_slice(bytes), media_type.to_owned());
        let mut m = self.manifests.lock().unwrap();
        m.insert((repo.to_owned(), tag.to_owned()), value.clone());
        m.insert((repo.to_owned(), d.to_string()), value);
        d
    }

    /// Answer `reference` of `repo` with `bytes`, whatever they hash to (a lie, if it is a
    /// digest they do not have).
    pub fn put_at(&self, repo: &str, reference: &str, bytes: &[u8], media_type: &str) {
        let value = (Bytes::copy_from_slice(bytes), media_type.to_owned());
        let key = (repo.to_owned(), reference.to_owned());
        self.manifests.lock().unwrap().insert(key, value);
    }

    pub fn put_blob(&self, bytes: &[u8]) -> Digest {
        let d = Digest::of(bytes);
        self.blobs
            .lock()
            .unwrap()
            .insert(d, Bytes::copy_from_slice(bytes));
        d
    }

    /// Whether it answers at all (down: every request fails as a refused connection would).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// What it was asked, in order: `"GET manifest repo:ref"`, `"HEAD blob repo@digest"`, …
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }

    fn note(&self, what: String) -> Result<(), RegistryError> {
        self.asked.lock().unwrap().push(what);
        if self.down.load(Ordering::SeqCst) {
            return Err(RegistryError::upstream_failed(
                "cannot connect to upstream: refused",
            ));
        }
        Ok(())
    }

    fn find(&self, repo: &RepoName, reference: &str) -> Result<(Bytes, String), RegistryError> {
        let key = (repo.to_string(), reference.to_owned());
        self.manifests
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .ok_or_else(|| RegistryError::not_found(ErrorCode::ManifestUnknown, "not upstream"))
    }

    fn blob_bytes(&self, digest: &Digest) -> Result<Bytes, RegistryError> {
        let found = self.blobs.lock().unwrap().get(digest).cloned();
        found.ok_or_else(|| RegistryError::not_found(ErrorCode::BlobUnknown, "not upstream"))
    }
}

#[async_trait]
impl Remote for FakeRemote {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        _accept: &str,
    ) -> Result<ManifestBody, RegistryError> {
        self.note(format!("GET manifest {repo}:{reference}"))?;
        let (bytes, media_type) = self.find(repo, reference)?;
        Ok(ManifestBody {
            digest: Some(Digest::of(&bytes).to_string()),
            media_type: Some(media_type),
            bytes,
            shared_by_source: false,
        })
    }

    async fn manifest_head(
        &self,
        repo: &RepoName,
        reference: &str,
        _accept: &str,
    ) -> Result<Head, RegistryError> {
        self.note(format!("HEAD manifest {repo}:{reference}"))?;
        let (bytes, _) = self.find(repo, reference)?;
        Ok(Head {
            digest: Some(Digest::of(&bytes)),
            len: Some(bytes.len() as u64),
            shared_by_source: false,
        })
    }

    async fn blob_head(&self, repo: &RepoName, digest: &Digest) -> Result<Head, RegistryError> {
        self.note(format!("HEAD blob {repo}@{digest}"))?;
        let bytes = self.blob_bytes(digest)?;
        Ok(Head {
            digest: Some(*digest),
            len: Some(bytes.len() as u64),
            shared_by_source: false,
        })
    }

    async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobBody, RegistryError> {
        self.note(format!("GET blob {repo}@{digest}"))?;
        let bytes = self.blob_bytes(digest)?;
        Ok(BlobBody {
            len: Some(bytes.len() as u64),
            chunks: futures_util::stream::iter([Ok(bytes)]).boxed(),
            shared_by_source: false,
        })
    }

    async fn tags(&self, repo: &RepoName, _query: &str) -> Result<Listing, RegistryError> {
        self.note(format!("GET tags {repo}"))?;
        Err(RegistryError::not_found(ErrorCode::NameUnknown, "no tags"))
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        _artifact_type: Option<&str>,
    ) -> Result<Referrers, RegistryError> {
        self.note(format!("GET referrers {repo}@{digest}"))?;
        Err(RegistryError::not_found(ErrorCode::ManifestUnknown, "none"))
    }

    fn read_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn has_credentials(&self) -> bool {
        false
    }
}
