//! This machine's disk in front of a shared store (a bucket): the store a member of a cluster
//! works on.
//!
//! The bucket is the store of record: what is listed, removed, exported or verified. The disk
//! holds what this instance stored itself, under its own quota, and answers first, so a hit on
//! it never touches the bucket. What this instance fetches goes to its disk at once, and to
//! the bucket from there on an uploader thread of its own (so that a slow bucket holds up no
//! fill); if the bucket cannot take it, the disk still has it (logged and counted).
//!
//! What waits for the uploader is written down, one empty file per object in `queued/`
//! (`<m|b>-<hex>`), removed once the object is in the bucket: what a stop, a crash or a
//! bucket outage left waiting is queued again at the next start, so the bucket catches up
//! with what this instance fetched.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ContentStore, DiskStore, Kind, Object, Spool, Stored, Upload, Use};
use crate::metrics::METRICS;
use crate::registry::Digest;

pub struct Tiers {
    pub local: Arc<DiskStore>,
    pub shared: Arc<dyn ContentStore>,
    /// Where what waits for the uploader is written down.
    queued: Arc<Queued>,
    /// Objects on the disk waiting to go to the bucket (`None` once closing).
    uploads: Option<std::sync::mpsc::SyncSender<(Kind, Digest)>>,
    uploader: Option<std::thread::JoinHandle<()>>,
}

/// Objects that may wait for the uploader; beyond, a fill uploads its own.
const UPLOAD_QUEUE: usize = 10_000;

impl Tiers {
    /// The disk `local` in front of `shared`, what waits for the uploader written down in
    /// `queued` (and what an earlier run left there queued again).
    pub fn new(
        local: Arc<DiskStore>,
        shared: Arc<dyn ContentStore>,
        queued: &Path,
    ) -> io::Result<Tiers> {
        let queued = Arc::new(Queued::open(queued)?);
        let (uploads, queue) = std::sync::mpsc::sync_channel(UPLOAD_QUEUE);
        let (l, s, q) = (local.clone(), shared.clone(), queued.clone());
        let uploader = std::thread::Builder::new()
            .name("wharf-uploads".into())
            .spawn(move || {
                for (kind, digest) in queue {
                    if upload(&l, &*s, kind, &digest) {
                        q.done(kind, &digest);
                    }
                }
            })?;
        let left = queued.left();
        if !left.is_empty() {
            tracing::info!(
                "{} objects an earlier run left for the bucket: queued",
                left.len()
            );
        }
        for (kind, digest) in left {
            // past a full queue, the rest wait for the next start
            if uploads.try_send((kind, digest)).is_err() {
                break;
            }
        }
        Ok(Tiers {
            local,
            shared,
            queued,
            uploads: Some(uploads),
            uploader: Some(uploader),
        })
    }

    /// Queue an object on the disk for the bucket (or, with the queue full, upload it now).
    fn upload_soon(&self, kind: Kind, digest: &Digest) {
        self.queued.add(kind, digest);
        let queued = self.uploads.as_ref().map(|q| q.try_send((kind, *digest)));
        if !matches!(queued, Some(Ok(()))) && upload(&self.local, &*self.shared, kind, digest) {
            self.queued.done(kind, digest);
        }
    }
}

/// The objects waiting for the bucket, as empty files named `<m|b>-<hex>`.
struct Queued(PathBuf);

impl Queued {
    fn open(dir: &Path) -> io::Result<Queued> {
        fs::create_dir_all(dir)?;
        Ok(Queued(dir.to_owned()))
    }

    fn name(&self, kind: Kind, digest: &Digest) -> PathBuf {
        let letter = match kind {
            Kind::Manifest => "m",
            Kind::Blob => "b",
        };
        self.0.join(format!("{letter}-{}", digest.hex()))
    }

    /// Write it down (a failure only loses the retry at the next start).
    fn add(&self, kind: Kind, digest: &Digest) {
        if let Err(e) = fs::File::create(self.name(kind, digest)) {
            tracing::warn!("cannot note {digest} as waiting for the bucket: {e}");
        }
    }

    fn done(&self, kind: Kind, digest: &Digest) {
        let _ = fs::remove_file(self.name(kind, digest));
    }

    /// What is written down.
    fn left(&self) -> Vec<(Kind, Digest)> {
        let names = fs::read_dir(&self.0).into_iter().flatten().flatten();
        names
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (letter, hex) = name.split_once('-')?;
                let kind = match letter {
                    "m" => Kind::Manifest,
                    "b" => Kind::Blob,
                    _ => return None,
                };
                Some((kind, Digest::parse(&format!("sha256:{hex}")).ok()?))
            })
            .collect()
    }
}

impl Drop for Tiers {
    /// What is queued still goes to the bucket (a command's imports, say) before it closes.
    fn drop(&mut self) {
        self.uploads.take();
        if let Some(u) = self.uploader.take() {
            let _ = u.join();
        }
    }
}

/// Copy an object from the disk into the bucket (unless it is there already): whether it is
/// done with (there now, or gone from the disk). Blocking.
fn upload(local: &DiskStore, shared: &dyn ContentStore, kind: Kind, digest: &Digest) -> bool {
    if shared.contains(kind, digest) {
        return true;
    }
    let copied = local
        .open(kind, digest, Use::Inspect)
        .and_then(|found| match found {
            Some(object) => shared.put(kind, digest, &mut object.reader()?),
            None => Ok(0), // evicted meanwhile
        });
    match copied {
        Ok(len) => {
            METRICS.bucket_writes.inc_by(len);
            true
        }
        Err(e) => {
            METRICS.bucket_failures.inc();
            tracing::warn!(
                "cannot put {digest} into the shared store, kept on this disk (and tried again at the next start): {e}"
            );
            false
        }
    }
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

    /// On the disk now, in the bucket soon (see [`Tiers`]).
    fn adopt(&self, kind: Kind, spool: Spool) -> io::Result<()> {
        let digest = spool.digest;
        self.local.adopt(kind, spool)?;
        self.upload_soon(kind, &digest);
        Ok(())
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

    /// A manifest stored by this instance: on the disk now, in the bucket soon.
    fn write(&self, kind: Kind, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        self.local.write(kind, digest, bytes)?;
        self.upload_soon(kind, digest);
        Ok(())
    }
}
