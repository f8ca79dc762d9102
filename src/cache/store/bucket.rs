//! The content store in a bucket (S3 and what speaks its API, or an Azure Blob Storage
//! container), through `object_store`: the store several wharfs share.
//!
//! Objects keep the disk's layout under the bucket's prefix, `<prefix>/{blobs,manifests}/
//! sha256/<hex>`, so a digest names one key. Nothing partial or wrong is ever readable there:
//! an object up to one part long is hashed in memory and put whole (`If-None-Match: *`), a
//! longer one goes up as a multipart upload that is completed only if the bytes hashed to
//! their digest and aborted otherwise; an upload that is never completed is invisible.
//! Multipart uploads in flight are written down in the data directory (`uploads/`), and those
//! an earlier run left (killed mid-upload) are aborted when the server starts; for an instance
//! that never comes back, the bucket's lifecycle rule for incomplete uploads is the backstop.
//! (On Azure an upload is uncommitted blocks, which cannot be aborted: the service drops them
//! a week after they were written.)
//!
//! `object_store` is async; this store runs it on a small runtime of its own, so that its
//! blocking calls (the [`ContentStore`] contract) can be made from any blocking thread.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::signer::{Method, Signer};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use super::{
    found, mismatch, ContentStore, Hashing, Kind, Object, ObjectBytes, Stored, Upload, Use,
};
use crate::registry::Digest;

/// Bytes of one part of a multipart upload (S3 wants at least 5 MiB but for the last), and so
/// the most an upload holds in memory.
const PART: usize = 8 << 20;

/// How long a bucket request is retried at most.
const RETRY_FOR: Duration = Duration::from_secs(10);

/// Where small records are kept beside the content, `<prefix>/<shelf>/…`.
#[derive(Clone, Copy, Debug)]
pub enum Shelf {
    /// What each instance served, for the bucket's recency (`cache::uses`).
    Uses,
    /// What each tag resolved to, and when (`cache::tags`).
    Tags,
}

impl Shelf {
    fn dir(self) -> &'static str {
        match self {
            Shelf::Uses => "uses",
            Shelf::Tags => "tags",
        }
    }
}

/// A bucket (and prefix in it) holding manifests and blobs.
pub struct BucketStore {
    url: String,
    prefix: Key,
    bucket: Bucket,
    /// What `bucket`'s handle drives on, owned here.
    _runtime: Runtime,
}

/// The bucket as every call reaches it: the client, its multipart side, the runtime that
/// drives them, and where multipart uploads in flight are written down.
#[derive(Clone)]
struct Bucket {
    objects: Arc<dyn ObjectStore>,
    parts: Arc<dyn MultipartStore>,
    signer: Arc<dyn Signer>,
    runtime: tokio::runtime::Handle,
    journal: PathBuf,
}

impl Bucket {
    /// Run `work` on the bucket's runtime and wait for it. Blocking.
    fn wait<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> io::Result<T> {
        let joined = self.runtime.block_on(self.runtime.spawn(work));
        joined.map_err(io::Error::other)?.map_err(to_io)
    }
}

/// `[store.options]` as one builder's configuration keys (any case), or which one it lacks.
fn keys<K: std::str::FromStr>(options: &[(String, String)]) -> Result<Vec<(K, &str)>, String>
where
    K::Err: std::fmt::Display,
{
    let key = |k: &String| {
        k.to_ascii_lowercase()
            .parse()
            .map_err(|e| format!("store option {k:?}: {e}"))
    };
    options
        .iter()
        .map(|(k, v)| Ok((key(k)?, v.as_str())))
        .collect()
}

/// The three sides of one bucket client, as the store uses them.
type Handles = (
    Arc<dyn ObjectStore>,
    Arc<dyn MultipartStore>,
    Arc<dyn Signer>,
);

fn handles<B: ObjectStore + MultipartStore + Signer>(
    built: object_store::Result<B>,
) -> object_store::Result<Handles> {
    let bucket = Arc::new(built?);
    Ok((bucket.clone(), bucket.clone(), bucket))
}

/// `object_store`'s own runtime (shut down without waiting when the store goes).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl BucketStore {
    /// The bucket at `url` (`s3://bucket/prefix`, or `az://container/prefix` for Azure Blob
    /// Storage), configured by `options` (`object_store`'s keys, e.g. `aws_endpoint`,
    /// `aws_region`, `aws_allow_http`; `azure_storage_account_name`, `azure_storage_account_key`)
    /// over the usual environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ENDPOINT`, …, `AZURE_STORAGE_ACCOUNT_NAME`, …). Multipart uploads in flight are
    /// written down in `journal`.
    pub fn open(
        url: &str,
        options: &[(String, String)],
        journal: &Path,
    ) -> Result<BucketStore, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("store url {url:?}: {e}"))?;
        // object_store's HTTP client takes the process's TLS provider: wharf's is ring
        let _ = rustls::crypto::ring::default_provider().install_default();
        // a bucket that does not answer must not hold a request for object_store's default
        // three minutes of retries: a miss then goes to the upstream, a fill keeps its spool
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: RETRY_FOR,
            ..Default::default()
        };
        let (objects, parts, signer) = match parsed.scheme() {
            "s3" => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url);
                for (key, v) in keys(options)? {
                    builder = builder.with_config(key, v);
                }
                handles(builder.with_retry(retry).build())
            }
            "az" => {
                let mut builder =
                    object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url);
                for (key, v) in keys(options)? {
                    builder = builder.with_config(key, v);
                }
                handles(builder.with_retry(retry).build())
            }
            _ => {
                return Err(format!(
                    "store url {url:?}: the store is s3://<bucket>/<prefix> (S3 and what speaks \
                     its API) or az://<container>/<prefix> (Azure Blob Storage)"
                ))
            }
        }
        .map_err(|e| format!("store {url}: {e}"))?;
        let prefix = Key::parse(parsed.path().trim_matches('/'))
            .map_err(|e| format!("store url {url:?}: {e}"))?;
        fs::create_dir_all(journal)
            .map_err(|e| format!("cannot make {}: {e}", journal.display()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wharf-bucket")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the bucket's runtime: {e}"))?;
        Ok(BucketStore {
            url: url.trim_end_matches('/').to_owned(),
            prefix,
            bucket: Bucket {
                objects,
                parts,
                signer,
                runtime: runtime.handle().clone(),
                journal: journal.to_owned(),
            },
            _runtime: Runtime(Some(runtime)),
        })
    }

    fn key(&self, kind: Kind, digest: &Digest) -> Key {
        self.prefix
            .clone()
            .join(kind.dir())
            .join("sha256")
            .join(digest.hex())
    }

    fn record_key(&self, shelf: Shelf, name: &str) -> Key {
        // names are made of validated parts (digests, registry hosts, repository names, tags)
        let mut key = self.prefix.clone().join(shelf.dir());
        for part in name.split('/') {
            key = key.join(part);
        }
        key
    }

    /// Put a small record (not content) on `shelf`, replacing any of that name. Blocking.
    pub fn put_record(&self, shelf: Shelf, name: &str, bytes: Vec<u8>) -> io::Result<()> {
        let (objects, key) = (self.bucket.objects.clone(), self.record_key(shelf, name));
        let data = PutPayload::from(Bytes::from(bytes));
        self.bucket
            .wait(async move { objects.put(&key, data).await })
            .map(drop)
    }

    /// The names of the records on `shelf` (paths below it, as they were put), sorted.
    /// Blocking.
    pub fn records(&self, shelf: Shelf) -> io::Result<Vec<String>> {
        let (objects, dir) = (
            self.bucket.objects.clone(),
            self.prefix.clone().join(shelf.dir()),
        );
        let metas = self.bucket.wait({
            let dir = dir.clone();
            async move {
                let all: Vec<_> = objects.list(Some(&dir)).collect().await;
                all.into_iter().collect::<object_store::Result<Vec<_>>>()
            }
        })?;
        let mut names: Vec<String> = metas
            .iter()
            .filter_map(|m| {
                let parts: Vec<_> = m.location.prefix_match(&dir)?.collect();
                let parts: Vec<&str> = parts.iter().map(|p| p.as_ref()).collect();
                Some(parts.join("/"))
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// A URL that lets its holder GET an object (Range too) for `valid_for`, with no other
    /// credentials: a presigned S3 request, or an Azure SAS URL. Made here, without asking the
    /// bucket (but for Azure AD credentials: a user delegation key, fetched once and cached).
    /// Blocking.
    pub fn signed_url(
        &self,
        kind: Kind,
        digest: &Digest,
        valid_for: Duration,
    ) -> io::Result<String> {
        let (signer, key) = (self.bucket.signer.clone(), self.key(kind, digest));
        self.bucket
            .wait(async move { signer.signed_url(Method::GET, &key, valid_for).await })
            .map(String::from)
    }

    /// Replace the record `name` on `shelf` by what `update` makes of it (None: there is
    /// none), soon: on the bucket's own runtime, not waited for; a failure is logged.
    pub fn update_record_soon(
        &self,
        shelf: Shelf,
        name: String,
        update: impl FnOnce(Option<Bytes>) -> Vec<u8> + Send + 'static,
    ) {
        let (objects, key) = (self.bucket.objects.clone(), self.record_key(shelf, &name));
        self.bucket.runtime.spawn(async move {
            let old = match objects.get(&key).await {
                Ok(got) => got.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            };
            let put = match old {
                Ok(old) => objects.put(&key, PutPayload::from(update(old))).await,
                Err(e) => Err(e),
            };
            if let Err(e) = put {
                tracing::warn!("cannot share the record {name}: {e}");
            }
        });
    }

    /// One record whole, if there is one of that name. Blocking.
    pub fn read_record(&self, shelf: Shelf, name: &str) -> io::Result<Option<Bytes>> {
        let (objects, key) = (self.bucket.objects.clone(), self.record_key(shelf, name));
        found(
            self.bucket
                .wait(async move { objects.get(&key).await?.bytes().await }),
        )
    }

    pub fn remove_record(&self, shelf: Shelf, name: &str) -> io::Result<()> {
        let (objects, key) = (self.bucket.objects.clone(), self.record_key(shelf, name));
        found(self.bucket.wait(async move { objects.delete(&key).await })).map(drop)
    }

    /// Abort the multipart uploads an earlier run left in the journal. For the server, at
    /// start; blocking.
    pub fn abort_leftovers(&self) -> usize {
        let mut aborted = 0;
        for entry in fs::read_dir(&self.bucket.journal)
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(text) = fs::read_to_string(entry.path()) else {
                continue;
            };
            let Some((key, id)) = text.split_once('\n') else {
                let _ = fs::remove_file(entry.path());
                continue;
            };
            let (parts, key, id) = (self.bucket.parts.clone(), Key::from(key), id.to_owned());
            match self
                .bucket
                .wait(async move { parts.abort_multipart(&key, &id).await })
            {
                Ok(()) => aborted += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("cannot abort an upload an earlier run left: {e}");
                    continue;
                }
            }
            let _ = fs::remove_file(entry.path());
        }
        aborted
    }
}

fn to_io(e: object_store::Error) -> io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl ContentStore for BucketStore {
    fn stat(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Stored>> {
        let (objects, key) = (self.bucket.objects.clone(), self.key(kind, digest));
        let meta = found(self.bucket.wait(async move { objects.head(&key).await }))?;
        Ok(meta.map(|m| Stored {
            kind,
            digest: *digest,
            size: m.size,
            modified: m.last_modified.into(),
        }))
    }

    /// Serving an object is no write to the bucket: recency across the cluster is not kept
    /// per hit.
    fn open(&self, kind: Kind, digest: &Digest, _usage: Use) -> io::Result<Option<Object>> {
        let Some(stored) = self.stat(kind, digest)? else {
            return Ok(None);
        };
        let bytes = BucketBytes {
            objects: self.bucket.objects.clone(),
            key: self.key(kind, digest),
            runtime: self.bucket.runtime.clone(),
            len: stored.size,
            body: Mutex::new(None),
        };
        Ok(Some(Object::new(stored.size, Arc::new(bytes))))
    }

    fn begin(&self, kind: Kind, digest: &Digest) -> io::Result<Box<dyn Upload>> {
        Ok(Box::new(BucketUpload {
            store: self.bucket.clone(),
            key: self.key(kind, digest),
            digest: *digest,
            hashing: Hashing::new(Vec::new()),
            multipart: None,
        }))
    }

    fn remove(&self, kind: Kind, digest: &Digest) -> io::Result<bool> {
        if self.stat(kind, digest)?.is_none() {
            return Ok(false);
        }
        let (objects, key) = (self.bucket.objects.clone(), self.key(kind, digest));
        found(self.bucket.wait(async move { objects.delete(&key).await })).map(|r| r.is_some())
    }

    fn list(&self) -> io::Result<Vec<Stored>> {
        let mut out = Vec::new();
        for kind in [Kind::Manifest, Kind::Blob] {
            let dir = self.prefix.clone().join(kind.dir()).join("sha256");
            let objects = self.bucket.objects.clone();
            let metas = self.bucket.wait(async move {
                let all: Vec<_> = objects.list(Some(&dir)).collect().await;
                all.into_iter().collect::<object_store::Result<Vec<_>>>()
            })?;
            for m in metas {
                let Some(hex) = m.location.filename() else {
                    continue;
                };
                let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) else {
                    continue;
                };
                out.push(Stored {
                    kind,
                    digest,
                    size: m.size,
                    modified: m.last_modified.into(),
                });
            }
        }
        Ok(out)
    }

    fn location(&self, kind: Kind, digest: &Digest) -> String {
        format!("{}/{}/sha256/{}", self.url, kind.dir(), digest.hex())
    }
}

/// A multipart upload under way: its id, the parts sent, and its entry in the journal.
struct Multipart {
    id: String,
    parts: Vec<PartId>,
    entry: PathBuf,
}

/// An object on its way into the bucket: hashed as it comes, sent a part at a time.
struct BucketUpload {
    store: Bucket,
    key: Key,
    digest: Digest,
    /// The part being gathered (at most [`PART`] bytes), and the hash of everything so far.
    hashing: Hashing<Vec<u8>>,
    multipart: Option<Multipart>,
}

impl BucketUpload {
    /// Send the gathered part, starting the multipart upload if it is the first.
    fn send_part(&mut self) -> io::Result<()> {
        if self.multipart.is_none() {
            let (parts, key) = (self.store.parts.clone(), self.key.clone());
            let id = self
                .store
                .wait(async move { parts.create_multipart(&key).await })?;
            let entry = self
                .store
                .journal
                .join(format!("{:016x}", rand::random::<u64>()));
            fs::write(&entry, format!("{}\n{id}", self.key))?;
            self.multipart = Some(Multipart {
                id,
                parts: Vec::new(),
                entry,
            });
        }
        let data = self.take_part();
        let m = self.multipart.as_ref().expect("started above");
        let (parts, key, id, idx) = (
            self.store.parts.clone(),
            self.key.clone(),
            m.id.clone(),
            m.parts.len(),
        );
        let part = self
            .store
            .wait(async move { parts.put_part(&key, &id, idx, data).await })?;
        self.multipart.as_mut().expect("started").parts.push(part);
        Ok(())
    }

    fn hashing_buffer(&mut self) -> &mut Vec<u8> {
        self.hashing.inner_mut()
    }

    /// The gathered part, to send; the buffer starts again empty.
    fn take_part(&mut self) -> PutPayload {
        PutPayload::from(Bytes::from(std::mem::take(self.hashing_buffer())))
    }
}

impl Write for BucketUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = PART - self.hashing_buffer().len();
        let n = buf.len().min(room);
        self.hashing.write_all(&buf[..n])?;
        if self.hashing_buffer().len() == PART {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload for BucketUpload {
    fn commit(mut self: Box<Self>) -> io::Result<u64> {
        let (got, len) = (self.hashing.digest(), self.hashing.len());
        if got != self.digest {
            return Err(mismatch(&self.digest, &got)); // dropped: aborted
        }
        let key = self.key.clone();
        let Some(mut m) = self.multipart.take() else {
            let data = self.take_part();
            let objects = self.store.objects.clone();
            let put = async move {
                let opts = object_store::PutOptions::from(PutMode::Create);
                objects.put_opts(&key, data, opts).await
            };
            return match self.store.wait(put) {
                // the same digest is the same content: someone stored it first
                Ok(_) => Ok(len),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(len),
                Err(e) => Err(e),
            };
        };
        if !self.hashing_buffer().is_empty() || m.parts.is_empty() {
            self.multipart = Some(m);
            self.send_part()?;
            m = self.multipart.take().expect("put back above");
        }
        let (parts, id, list) = (self.store.parts.clone(), m.id.clone(), m.parts.clone());
        let done = self
            .store
            .wait(async move { parts.complete_multipart(&key, &id, list).await });
        if let Err(e) = done {
            self.multipart = Some(m); // dropped: aborted
                                      // Another instance may have stored the digest while this one uploaded it: on Azure
                                      // its commit drops this upload's blocks, and this commit fails. The same digest is
                                      // the same content, so an object of the whole length under the key is a success.
            let (objects, key) = (self.store.objects.clone(), self.key.clone());
            return match self.store.wait(async move { objects.head(&key).await }) {
                Ok(meta) if meta.size == len => Ok(len),
                _ => Err(e),
            };
        }
        let _ = fs::remove_file(&m.entry);
        Ok(len)
    }
}

impl Drop for BucketUpload {
    /// An upload not completed is aborted, off whatever thread drops it.
    fn drop(&mut self) {
        let Some(m) = self.multipart.take() else {
            return;
        };
        let (parts, key) = (self.store.parts.clone(), self.key.clone());
        self.store.runtime.spawn(async move {
            match parts.abort_multipart(&key, &m.id).await {
                Ok(()) => {
                    let _ = fs::remove_file(&m.entry);
                }
                Err(e) => tracing::warn!("cannot abort the upload of {key}: {e}"),
            }
        });
    }
}

/// The bytes of an object in the bucket, read on one streaming GET while reads follow each
/// other (as a client's download does), and a new ranged GET where they jump.
struct BucketBytes {
    objects: Arc<dyn ObjectStore>,
    key: Key,
    runtime: tokio::runtime::Handle,
    len: u64,
    /// The GET being read: the offset its next byte is at, the rest of a chunk, the stream.
    body: Mutex<Option<Body>>,
}

struct Body {
    at: u64,
    rest: Bytes,
    chunks: BoxStream<'static, object_store::Result<Bytes>>,
}

impl BucketBytes {
    /// The object from `offset` to its end, as a stream.
    async fn body_from(objects: &dyn ObjectStore, key: &Key, offset: u64) -> io::Result<Body> {
        let opts = GetOptions {
            range: Some(GetRange::Offset(offset)),
            ..Default::default()
        };
        let got = objects.get_opts(key, opts).await.map_err(to_io)?;
        Ok(Body {
            at: offset,
            rest: Bytes::new(),
            chunks: got.into_stream(),
        })
    }

    /// Exactly `len` bytes from `offset`, continuing `body` if it is there. A body that fails
    /// on the way (the bucket or a balancer in front drops a long or idle connection) is
    /// asked for again from where it stopped, once a read.
    async fn read(
        objects: Arc<dyn ObjectStore>,
        key: Key,
        body: Option<Body>,
        offset: u64,
        len: usize,
    ) -> io::Result<(Bytes, Body)> {
        let (mut body, mut asked_again) = match body.filter(|b| b.at == offset) {
            Some(b) => (b, false),
            None => (Self::body_from(&*objects, &key, offset).await?, true),
        };
        let mut out = BytesMut::new();
        while out.len() < len {
            if body.rest.is_empty() {
                body.rest = match body.chunks.next().await {
                    Some(Ok(c)) => c,
                    Some(Err(e)) if !asked_again => {
                        tracing::debug!("reading {key} again from {}: {e}", body.at);
                        body = Self::body_from(&*objects, &key, body.at).await?;
                        asked_again = true;
                        continue;
                    }
                    Some(Err(e)) => return Err(to_io(e)),
                    None => return Err(io::ErrorKind::UnexpectedEof.into()),
                };
                if body.rest.len() >= len - out.len() && out.is_empty() {
                    // the common case: one chunk holds the whole read, no copy
                    let first = body.rest.split_to(len);
                    body.at += len as u64;
                    return Ok((first, body));
                }
            }
            let n = body.rest.len().min(len - out.len());
            out.extend_from_slice(&body.rest.split_to(n));
            body.at += n as u64;
        }
        Ok((out.freeze(), body))
    }
}

#[async_trait]
impl ObjectBytes for BucketBytes {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let body = self.body.lock().expect("bucket body").take();
        let (objects, key) = (self.objects.clone(), self.key.clone());
        let read = self
            .runtime
            .spawn(Self::read(objects, key, body, offset, len));
        let (bytes, body) = read.await.map_err(io::Error::other)??;
        *self.body.lock().expect("bucket body") = Some(body);
        crate::metrics::METRICS
            .bucket_reads
            .inc_by(bytes.len() as u64);
        Ok(bytes)
    }

    fn reader(&self) -> io::Result<Box<dyn io::Read + Send>> {
        let bytes = BucketBytes {
            objects: self.objects.clone(),
            key: self.key.clone(),
            runtime: self.runtime.clone(),
            len: self.len,
            body: Mutex::new(None),
        };
        Ok(Box::new(BucketReader { bytes, at: 0 }))
    }
}

/// An object in the bucket read from its start, for the commands. Blocking.
struct BucketReader {
    bytes: BucketBytes,
    at: u64,
}

impl io::Read for BucketReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.bytes.len - self.at).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let runtime = self.bytes.runtime.clone();
        let chunk = runtime.block_on(self.bytes.read_at(self.at, n))?;
        buf[..n].copy_from_slice(&chunk);
        self.at += n as u64;
        Ok(n)
    }
}
