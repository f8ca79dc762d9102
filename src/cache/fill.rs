//! In-flight fills: one upstream download per digest, shared by every client that wants it.
//!
//! A fill writes the upstream's bytes into a temp file while hashing them. Clients do not wait
//! for the end: each one reads the growing file up to what has been written so far, through its
//! own [`FillReader`]. The last byte is held back until the digest is verified, so a corrupt or
//! truncated download can only ever reach a client as a cut connection, never as a clean
//! response with wrong bytes. The fill belongs to no client: it finishes and is committed even
//! if every reader leaves.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};

use super::store::{read_at, BlobStore, Kind};
use crate::registry::{Digest, RegistryError};

/// Where a fill is.
#[derive(Clone, Debug)]
pub enum Phase {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes are arriving; `written` of `total` are in the temp file.
    Streaming,
    /// Every byte is written and the digest matched: readers may send the end.
    Verified,
    /// The upstream failed or sent bad bytes: readers must cut their clients off.
    Failed(RegistryError),
}

#[derive(Clone, Debug)]
pub struct FillState {
    pub phase: Phase,
    /// Length the upstream announced, if it did.
    pub total: Option<u64>,
    pub written: u64,
    /// Whether the verified file made it into the store (`None` until decided).
    pub stored: Option<bool>,
}

/// One blob being fetched into the cache.
pub struct Fill {
    pub digest: Digest,
    file: Arc<File>,
    tmp: PathBuf,
    state: watch::Sender<FillState>,
}

impl Fill {
    /// Wait for the upstream's answer: the announced length, or why there will be no body.
    pub async fn ready(&self) -> Result<Option<u64>, RegistryError> {
        let mut rx = self.state.subscribe();
        let s = rx
            .wait_for(|s| !matches!(s.phase, Phase::Connecting))
            .await
            .map_err(|_| abandoned())?;
        match &s.phase {
            Phase::Failed(e) => Err(e.clone()),
            _ => Ok(s.total),
        }
    }

    /// Wait for the whole blob to be written and verified; returns its length.
    pub async fn finished(&self) -> Result<u64, RegistryError> {
        let mut rx = self.state.subscribe();
        let s = rx
            .wait_for(|s| matches!(s.phase, Phase::Verified | Phase::Failed(_)))
            .await
            .map_err(|_| abandoned())?;
        match &s.phase {
            Phase::Failed(e) => Err(e.clone()),
            _ => Ok(s.written),
        }
    }

    /// The file the fill writes into (stays readable after it is committed or removed).
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn reader(&self) -> FillReader {
        FillReader {
            file: self.file.clone(),
            state: self.state.subscribe(),
            pos: 0,
        }
    }

    /// The upstream answered: the body follows, `total` bytes long if announced.
    pub fn start(&self, total: Option<u64>) {
        self.state.send_modify(|s| {
            s.total = total;
            s.phase = Phase::Streaming;
        });
    }

    /// Write chunks from `chunks` into the temp file, hashing them and publishing progress.
    /// Runs on a blocking thread until the sender closes; returns the digest and length seen.
    pub fn write_chunks(&self, mut chunks: mpsc::Receiver<Bytes>) -> io::Result<(Digest, u64)> {
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        while let Some(chunk) = chunks.blocking_recv() {
            self.file.write_all_at(&chunk, offset)?;
            hasher.update(&chunk);
            offset += chunk.len() as u64;
            self.state.send_modify(|s| s.written = offset);
        }
        Ok((Digest::from_bytes(hasher.finalize().into()), offset))
    }

    /// The digest matched: readers may finish.
    pub fn verified(&self) {
        self.state.send_modify(|s| s.phase = Phase::Verified);
    }

    /// Move the verified temp file into the store. Blocking.
    pub fn commit(&self, store: &BlobStore) -> io::Result<()> {
        let result = store.commit(&self.tmp, &self.file, Kind::Blob, &self.digest);
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        self.state.send_modify(|s| s.stored = Some(result.is_ok()));
        result
    }

    /// Wait until the blob is in the store; returns its length.
    pub async fn stored(&self) -> Result<u64, RegistryError> {
        let mut rx = self.state.subscribe();
        let s = rx
            .wait_for(|s| s.stored.is_some() || matches!(s.phase, Phase::Failed(_)))
            .await
            .map_err(|_| abandoned())?;
        match (&s.phase, s.stored) {
            (Phase::Failed(e), _) => Err(e.clone()),
            (_, Some(true)) => Ok(s.written),
            _ => Err(RegistryError::internal(format!(
                "blob {} was verified but could not be stored",
                self.digest
            ))),
        }
    }

    /// Give up: readers are told why and the temp file is removed. Blocking (one unlink).
    pub fn fail(&self, error: RegistryError) {
        self.state.send_modify(|s| s.phase = Phase::Failed(error));
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn abandoned() -> RegistryError {
    RegistryError::internal("the fill for this blob stopped unexpectedly")
}

/// A client's view of a fill: the bytes written so far, never the last one before verification.
pub struct FillReader {
    file: Arc<File>,
    state: watch::Receiver<FillState>,
    pos: u64,
}

impl FillReader {
    /// The next chunk of at most `max` bytes, `None` at the verified end, or the error that must
    /// cut the client off.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, RegistryError> {
        loop {
            let (readable, done) = {
                let s = self.state.borrow_and_update();
                match &s.phase {
                    Phase::Failed(e) => return Err(e.clone()),
                    Phase::Verified => (s.written, true),
                    Phase::Streaming => (s.written.saturating_sub(1), false),
                    Phase::Connecting => (0, false),
                }
            };
            if self.pos < readable {
                let len = (readable - self.pos).min(max as u64) as usize;
                let chunk = read_at(self.file.clone(), self.pos, len).await?;
                self.pos += len as u64;
                return Ok(Some(chunk));
            }
            if done {
                return Ok(None);
            }
            self.state.changed().await.map_err(|_| abandoned())?;
        }
    }
}

/// How a request for a blob relates to the fills in flight.
pub enum Joined {
    /// Already in the store: no fill needed.
    Stored,
    /// Another request's fill is running: read along.
    Existing(Arc<Fill>),
    /// This request started the fill; the caller must drive it.
    New(Arc<Fill>),
}

/// The fills in flight, by digest.
#[derive(Default)]
pub struct Fills {
    map: Mutex<HashMap<Digest, Arc<Fill>>>,
}

impl Fills {
    /// Join the running fill for `digest`, or start one (creating its temp file) unless the
    /// store has the blob by now. The store is checked under the lock, so a fill that commits
    /// between a caller's own check and this call is not started twice.
    pub fn join_or_start(&self, store: &BlobStore, digest: &Digest) -> io::Result<Joined> {
        let mut map = self.map.lock().expect("fill map");
        if let Some(f) = map.get(digest) {
            return Ok(Joined::Existing(f.clone()));
        }
        if store.contains(Kind::Blob, digest) {
            return Ok(Joined::Stored);
        }
        let (file, tmp) = store.temp_file(digest)?;
        let (state, _) = watch::channel(FillState {
            phase: Phase::Connecting,
            total: None,
            written: 0,
            stored: None,
        });
        let fill = Arc::new(Fill {
            digest: *digest,
            file: Arc::new(file),
            tmp,
            state,
        });
        map.insert(*digest, fill.clone());
        Ok(Joined::New(fill))
    }

    /// The running fill for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.map.lock().expect("fill map").get(digest).cloned()
    }

    /// Forget a fill once it is committed (or failed), so later requests go to the store.
    pub fn remove(&self, digest: &Digest) {
        self.map.lock().expect("fill map").remove(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(mut r: FillReader) -> Result<Vec<u8>, RegistryError> {
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk(3).await? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn readers_get_every_byte_only_after_verification() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let body = b"hello, wharf".to_vec();
        let digest = Digest::of(&body);
        let Joined::New(fill) = Fills::default().join_or_start(&store, &digest).unwrap() else {
            panic!("expected a new fill")
        };
        let reader = tokio::spawn(drain(fill.reader()));
        fill.start(Some(body.len() as u64));
        let (tx, rx) = mpsc::channel(4);
        let f = fill.clone();
        let writer = tokio::task::spawn_blocking(move || f.write_chunks(rx));
        for part in body.chunks(5) {
            tx.send(Bytes::copy_from_slice(part)).await.unwrap();
        }
        drop(tx);
        let (got, len) = writer.await.unwrap().unwrap();
        assert_eq!((got, len), (digest, body.len() as u64));
        // everything but the last byte may be out; the reader cannot finish yet
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!reader.is_finished());
        fill.verified();
        assert_eq!(reader.await.unwrap().unwrap(), body);
        fill.commit(&store).unwrap();
        assert!(store.contains(Kind::Blob, &digest));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_fill_cuts_readers_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"x");
        let fills = Fills::default();
        let Joined::New(fill) = fills.join_or_start(&store, &digest).unwrap() else {
            panic!()
        };
        assert!(matches!(
            fills.join_or_start(&store, &digest).unwrap(),
            Joined::Existing(_)
        ));
        let reader = tokio::spawn(drain(fill.reader()));
        fill.start(Some(10));
        fill.fail(RegistryError::bad_gateway("digest mismatch"));
        assert!(reader.await.unwrap().is_err());
        assert!(!store.contains(Kind::Blob, &digest));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
