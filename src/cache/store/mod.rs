//! The content store: every manifest and blob wharf has verified, by digest.
//!
//! [`ContentStore`] is what the rest of wharf may ask of storage: whether an object is there
//! and how big, its bytes (a range at a time, for serving; or as a reader, for the commands),
//! a write that becomes visible only if the bytes hash to their digest, removal, and a walk of
//! everything stored. Nothing outside an implementation knows where or how objects are kept.
//! [`DiskStore`] keeps them as files; a bucket is the other store these calls are shaped for
//! (so no call hands out a path, and writes are whole objects that commit or vanish).
//!
//! Calls are blocking, like the file system they were first written for, and are made from
//! blocking threads; only [`Object::read_at`], which serves clients, is async.

mod bucket;
mod disk;
mod tiers;

pub use bucket::{BucketStore, Shelf};
pub use disk::{free_space, read_at, DiskStore, Spool};
pub use tiers::Tiers;

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::registry::Digest;

/// Manifests and blobs live apart: a digest asked for as a manifest must be one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Manifest,
    Blob,
}

impl Kind {
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Manifest => "manifests",
            Kind::Blob => "blobs",
        }
    }
}

/// One stored object: what it is, its size, and when it was last used (as the store keeps it).
pub struct Stored {
    pub kind: Kind,
    pub digest: Digest,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

/// Why an object is opened: to serve it (which counts as a use, for recency across restarts)
/// or to inspect it (export, verify), which must not change what is least recently used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Serve,
    Inspect,
}

/// What wharf needs from storage. Every method blocks.
pub trait ContentStore: Send + Sync + 'static {
    /// An object's size and last use; `None` if it is not stored.
    fn stat(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Stored>>;

    /// An object's bytes, to read at will; `None` if it is not stored. The object stays
    /// readable to the end even if it is removed meanwhile.
    fn open(&self, kind: Kind, digest: &Digest, usage: Use) -> io::Result<Option<Object>>;

    /// Begin writing an object: it becomes visible under `digest` only when
    /// [`Upload::commit`] finds the bytes written hash to it; dropped uncommitted, it leaves
    /// nothing behind.
    fn begin(&self, kind: Kind, digest: &Digest) -> io::Result<Box<dyn Upload>>;

    /// Remove an object; `false` if it was not there.
    fn remove(&self, kind: Kind, digest: &Digest) -> io::Result<bool>;

    /// Every stored object (names that are not digests are skipped).
    fn list(&self) -> io::Result<Vec<Stored>>;

    /// Where an object is, for messages to the operator.
    fn location(&self, kind: Kind, digest: &Digest) -> String;

    /// Store the verified bytes of a spool (a local temp file, see [`DiskStore::spool`]).
    /// A store on the same disk moves the file; others copy it.
    fn adopt(&self, kind: Kind, spool: Spool) -> io::Result<()> {
        self.put(kind, &spool.digest, &mut spool.reader()?)
            .map(drop)
    }

    /// Store what `bytes` reads, through [`ContentStore::begin`]: its length once committed.
    fn put(&self, kind: Kind, digest: &Digest, bytes: &mut dyn io::Read) -> io::Result<u64> {
        let mut up = self.begin(kind, digest)?;
        io::copy(bytes, &mut up)?;
        up.commit()
    }

    fn contains(&self, kind: Kind, digest: &Digest) -> bool {
        matches!(self.stat(kind, digest), Ok(Some(_)))
    }

    /// A small object (a manifest) whole; `None` if it is not stored.
    fn read(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        let Some(object) = self.open(kind, digest, Use::Inspect)? else {
            return Ok(None);
        };
        let mut buf = Vec::with_capacity(object.len as usize);
        io::Read::read_to_end(&mut object.reader()?, &mut buf)?;
        Ok(Some(buf))
    }

    /// Store a small object held in memory (a manifest).
    fn write(&self, kind: Kind, digest: &Digest, mut bytes: &[u8]) -> io::Result<()> {
        self.put(kind, digest, &mut bytes).map(drop)
    }
}

/// An object being written ([`ContentStore::begin`]).
pub trait Upload: Write + Send {
    /// Make the object visible if what was written hashes to its digest (returning its
    /// length); otherwise discard it and fail with `InvalidData`.
    fn commit(self: Box<Self>) -> io::Result<u64>;
}

/// What a store's lookup found: `None` where the object is not there.
pub(crate) fn found<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The failure of a commit whose bytes are not what their digest says.
pub fn mismatch(want: &Digest, got: &Digest) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("content is {got}, not {want} as its digest says"),
    )
}

/// Whether `bytes`, read to their end, hash to `digest`. Blocking.
pub fn hashes_to(bytes: &mut dyn io::Read, digest: &Digest) -> io::Result<bool> {
    let mut hashed = Hashing::new(io::sink());
    io::copy(bytes, &mut hashed)?;
    Ok(hashed.finish().0 == *digest)
}

/// A stored object, opened: its length, and its bytes a range at a time.
#[derive(Clone)]
pub struct Object {
    pub len: u64,
    bytes: Arc<dyn ObjectBytes>,
}

/// How an opened object's bytes are read: one implementation per store.
#[async_trait]
pub trait ObjectBytes: Send + Sync {
    /// Exactly `len` bytes from `offset`.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes>;

    /// The whole object as a blocking reader.
    fn reader(&self) -> io::Result<Box<dyn io::Read + Send>>;
}

impl Object {
    pub fn new(len: u64, bytes: Arc<dyn ObjectBytes>) -> Object {
        Object { len, bytes }
    }

    /// A local file of `len` bytes (a stored file, or a fill's spool once complete).
    pub fn file(file: Arc<File>, len: u64) -> Object {
        Object::new(len, Arc::new(disk::FileBytes(file)))
    }

    /// Exactly `len` bytes from `offset`.
    pub async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        self.bytes.read_at(offset, len).await
    }

    /// The whole object as a blocking reader.
    pub fn reader(&self) -> io::Result<Box<dyn io::Read + Send>> {
        self.bytes.reader()
    }
}

/// Content on its way somewhere, hashed as it passes: the one way wharf checks bytes against
/// their digest while it moves them (a fill writing a download, an upload, `verify`).
pub struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    len: u64,
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: sha2::Digest::new(),
            len: 0,
        }
    }

    /// Bytes passed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The writer.
    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The digest of what passed so far.
    pub fn digest(&self) -> Digest {
        Digest::from_bytes(sha2::Digest::finalize(self.hasher.clone()).into())
    }

    /// The digest and length of what passed, and the writer.
    pub fn finish(self) -> (Digest, u64, W) {
        let d = Digest::from_bytes(sha2::Digest::finalize(self.hasher).into());
        (d, self.len, self.inner)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What every content store must do, as a test each implementation runs on itself (the disk's
/// in its unit tests, the bucket's in `tests/bucket.rs` against a real S3 server).
#[doc(hidden)]
pub mod conformance {
    use super::*;

    /// Write, read back whole and by range, list, refuse wrong bytes, remove.
    pub async fn check(store: Arc<dyn ContentStore>) {
        let d = Digest::of(b"hello, store");
        let s = store.clone();
        let blocking = move || {
            assert!(s.stat(Kind::Blob, &d).unwrap().is_none());
            assert!(s.open(Kind::Blob, &d, Use::Serve).unwrap().is_none());
            s.write(Kind::Blob, &d, b"hello, store").unwrap();
            // another instance (or a retry) storing what is there already is no failure
            s.write(Kind::Blob, &d, b"hello, store").unwrap();
            assert_eq!(s.stat(Kind::Blob, &d).unwrap().unwrap().size, 12);
            assert!(!s.contains(Kind::Manifest, &d), "kinds live apart");
            assert_eq!(s.read(Kind::Blob, &d).unwrap().unwrap(), b"hello, store");

            // wrong bytes never become visible, under any name
            let other = Digest::of(b"other");
            let mut up = s.begin(Kind::Blob, &other).unwrap();
            up.write_all(b"not other").unwrap();
            let e = up.commit().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(!s.contains(Kind::Blob, &other));
            // nor does an upload dropped half way
            let mut up = s.begin(Kind::Blob, &other).unwrap();
            up.write_all(b"oth").unwrap();
            drop(up);
            assert!(!s.contains(Kind::Blob, &other));

            let listed = s.list().unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!((listed[0].kind, listed[0].digest), (Kind::Blob, d));
            s.open(Kind::Blob, &d, Use::Inspect).unwrap().unwrap()
        };
        let object = tokio::task::spawn_blocking(blocking).await.unwrap();
        assert_eq!(object.len, 12);
        assert_eq!(&object.read_at(7, 5).await.unwrap()[..], b"store");
        let s = store.clone();
        tokio::task::spawn_blocking(move || {
            assert!(s.remove(Kind::Blob, &d).unwrap());
            assert!(!s.remove(Kind::Blob, &d).unwrap());
            assert!(s.stat(Kind::Blob, &d).unwrap().is_none());
        })
        .await
        .unwrap();
    }
}
