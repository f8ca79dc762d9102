//! This machine's disk in front of a shared store (a bucket): the store a member of a cluster
//! works on.
//!
//! The bucket is the store of record: what is listed, removed, exported or verified. The disk
//! holds what this instance stored itself, under its own quota, and answers first, so a hit on
//! it never touches the bucket. What this instance fetches goes to both: the bucket first
//! (what the cluster shares), then its disk; if the bucket cannot take it, the disk still
//! does (logged), since the clients have had their bytes by then.

use std::io;
use std::sync::Arc;

use super::{ContentStore, DiskStore, Kind, Object, Spool, Stored, Upload, Use};
use crate::metrics::METRICS;
use crate::registry::Digest;

pub struct Tiers {
    pub local: Arc<DiskStore>,
    pub shared: Arc<dyn ContentStore>,
}

impl ContentStore for Tiers {
    fn stat(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Stored>> {
        match self.local.stat(kind, digest)? {
            Some(s) => Ok(Some(s)),
            None => self.shared.stat(kind, digest),
        }
    }

    fn open(&self, kind: Kind, digest: &Digest, usage: Use) -> io::Result<Option<Object>> {
        match self.local.open(kind, digest, usage)? {
            Some(o) => Ok(Some(o)),
            None => self.shared.open(kind, digest, usage),
        }
    }

    /// Writes go to the bucket only (imports and fills come through [`Tiers::adopt`]).
    fn begin(&self, kind: Kind, digest: &Digest) -> io::Result<Box<dyn Upload>> {
        self.shared.begin(kind, digest)
    }

    fn remove(&self, kind: Kind, digest: &Digest) -> io::Result<bool> {
        let local = self.local.remove(kind, digest)?;
        Ok(self.shared.remove(kind, digest)? || local)
    }

    fn list(&self) -> io::Result<Vec<Stored>> {
        self.shared.list()
    }

    fn location(&self, kind: Kind, digest: &Digest) -> String {
        self.shared.location(kind, digest)
    }

    fn adopt(&self, kind: Kind, spool: Spool) -> io::Result<()> {
        let up = self.shared.begin(kind, &spool.digest).and_then(|mut up| {
            io::copy(&mut spool.reader()?, &mut up)?;
            up.commit()
        });
        match up {
            Ok(len) => METRICS.bucket_writes.inc_by(len),
            Err(e) => {
                METRICS.bucket_failures.inc();
                tracing::warn!(
                    "cannot put {} into the shared store, kept on this disk only: {e}",
                    spool.digest
                );
            }
        }
        self.local.adopt(kind, spool)
    }

    fn contains(&self, kind: Kind, digest: &Digest) -> bool {
        self.local.contains(kind, digest) || self.shared.contains(kind, digest)
    }

    fn read(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        match self.local.read(kind, digest)? {
            Some(b) => Ok(Some(b)),
            None => self.shared.read(kind, digest),
        }
    }

    /// A manifest stored by this instance goes to both.
    fn write(&self, kind: Kind, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        match self.shared.write(kind, digest, bytes) {
            Ok(()) => METRICS.bucket_writes.inc_by(bytes.len() as u64),
            Err(e) => {
                METRICS.bucket_failures.inc();
                tracing::warn!(
                    "cannot put {digest} into the shared store, kept on this disk only: {e}"
                );
            }
        }
        self.local.write(kind, digest, bytes)
    }
}
