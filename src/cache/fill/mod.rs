//! In-flight fills: one upstream download per digest, shared by every client that wants it.
//!
//! A fill writes the upstream's bytes into a spool (a temp file on local disk) while hashing them. Clients do not wait
//! for the end: each one reads the growing file up to what has been written so far, through its
//! own [`FillReader`]. The last byte is held back until the digest is verified, so a corrupt or
//! truncated download can only ever reach a client as a cut connection, never as a clean
//! response with wrong bytes. The fill belongs to no client: it finishes and is committed even
//! if every reader leaves — but such orphans are bounded apart, and given up when they stall.
//!
//! Fills are bounded too: past `max_fills` a new one is refused at once rather than queued, so
//! a flood of cold misses costs wharf nothing but the refusals. A fill's disk work (temp file,
//! writes, hashing, fsync) runs on [`FillIo`]'s threads, never on the ones that serve hits.

mod drive;

pub use drive::{drive, Sink, Source};

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Notify};

use super::store::{free_space, read_at, ContentStore, Kind, Spool};
use crate::metrics::METRICS;
use crate::registry::{Digest, RegistryError};

/// Threads apart from those serving hits, for the disk work of fills: a slow disk or a storm
/// of fills makes fills wait for each other, never a hit. Each job is one batch of chunks (or
/// one fsync), so a handful of threads keeps up with any network.
pub struct FillIo {
    runtime: Option<tokio::runtime::Runtime>,
}

impl FillIo {
    pub fn new(threads: usize) -> io::Result<FillIo> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(threads.max(1))
            .thread_name("wharf-fill-io")
            .build()?;
        Ok(FillIo {
            runtime: Some(runtime),
        })
    }

    /// Run `work` on a fill thread and wait for it without holding any other thread.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let rt = self.runtime.as_ref().expect("runtime lives until drop");
        match rt.spawn_blocking(work).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Drop for FillIo {
    fn drop(&mut self) {
        // may be dropped inside another runtime, where a blocking shutdown would panic
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

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
    /// Length the upstream announced (or the manifest's descriptor gave), if known.
    pub total: Option<u64>,
    pub written: u64,
    /// Whether the verified file made it into the store (`None` until decided).
    pub stored: Option<bool>,
}

/// Who still wants a fill: at none it is an orphan.
#[derive(Default)]
struct Interest {
    readers: usize,
    orphaned: bool,
    done: bool,
}

/// One blob being fetched into the cache.
pub struct Fill {
    pub digest: Digest,
    /// The spool's file, for readers, once the fill has started.
    file: OnceLock<Arc<File>>,
    state: watch::Sender<FillState>,
    interest: Mutex<Interest>,
    limits: Arc<Limits>,
    /// Wakes the fill's driver when it must give up (too many orphans).
    abandon: Notify,
    /// It asks another cluster member for the blob (see [`Fill::asks_a_member`]).
    asks_a_member: std::sync::atomic::AtomicBool,
}

impl Fill {
    fn new(digest: Digest, limits: Arc<Limits>) -> Fill {
        let (state, _) = watch::channel(FillState {
            phase: Phase::Connecting,
            total: None,
            written: 0,
            stored: None,
        });
        Fill {
            digest,
            file: OnceLock::new(),
            state,
            interest: Mutex::default(),
            limits,
            abandon: Notify::new(),
            asks_a_member: std::sync::atomic::AtomicBool::new(false),
        }
    }

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

    /// A reader of this fill, counted as interest in it.
    pub fn reader(self: &Arc<Self>) -> FillReader {
        {
            let mut i = self.interest.lock().expect("fill interest");
            i.readers += 1;
            if i.orphaned {
                i.orphaned = false;
                self.limits.orphans_now(-1);
            }
        }
        FillReader {
            fill: self.clone(),
            state: self.state.subscribe(),
            pos: 0,
        }
    }

    /// A reader left; the last one to leave makes the fill an orphan, which is given up at
    /// once if there are too many of them already.
    fn release(&self) {
        let mut i = self.interest.lock().expect("fill interest");
        i.readers -= 1;
        if i.readers > 0 || i.done {
            return;
        }
        i.orphaned = true;
        if self.limits.orphans_now(1) > self.limits.max_orphans {
            tracing::warn!(
                "giving up the fill of {}: no client waits for it, and {} other fills are in the same case (max_orphan_fills)",
                self.digest,
                self.limits.max_orphans
            );
            self.abandon.notify_one();
        }
    }

    /// Say whether this fill asks another cluster member for its blob (it does while it
    /// waits for the member's answer; not once it went to the upstream instead).
    pub fn ask_a_member(&self, asks: bool) {
        self.asks_a_member
            .store(asks, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether it asks another member: a member's request must not wait for it, since that
    /// member may be the one it waits for (two members that disagree on who owns a digest).
    pub fn asks_a_member(&self) -> bool {
        self.asks_a_member
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether every reader has left.
    pub fn is_orphaned(&self) -> bool {
        self.interest.lock().expect("fill interest").orphaned
    }

    /// Resolves when the fill must be given up: it was told to, and no client has come back
    /// for it since.
    pub async fn abandoned(&self) {
        loop {
            self.abandon.notified().await;
            if self.is_orphaned() {
                return;
            }
        }
    }

    /// Bytes still to come, if the length is known: what the disk must still take.
    fn outstanding(&self) -> u64 {
        let s = self.state.borrow();
        match s.phase {
            Phase::Connecting | Phase::Streaming => {
                s.total.map_or(0, |t| t.saturating_sub(s.written))
            }
            _ => 0,
        }
    }

    /// The fill writes into `spool`: readers read its file.
    pub fn spools_into(&self, spool: &Spool) {
        let _ = self.file.set(spool.file());
    }

    /// The file the fill writes into (stays readable after it is stored or removed).
    fn file(&self) -> Arc<File> {
        self.file
            .get()
            .expect("a fill streams after its spool exists")
            .clone()
    }

    /// The upstream answered: the body follows, `total` bytes long if known.
    pub fn start(&self, total: Option<u64>) {
        self.state.send_modify(|s| {
            s.total = total;
            s.phase = Phase::Streaming;
        });
    }

    /// `written` bytes are in the file: readers may read them (but the last).
    pub fn progress(&self, written: u64) {
        self.state.send_modify(|s| s.written = written);
    }

    /// The digest matched: readers may finish.
    pub fn verified(&self) {
        self.end();
        self.state.send_modify(|s| s.phase = Phase::Verified);
    }

    /// Put the verified spool into the store. Blocking.
    pub fn commit(&self, store: &dyn ContentStore, spool: Spool) -> io::Result<()> {
        let result = store.adopt(Kind::Blob, spool);
        self.state.send_modify(|s| s.stored = Some(result.is_ok()));
        result
    }

    /// Give up: readers are told why (the spool removes itself where it is dropped).
    pub fn fail(&self, error: RegistryError) {
        self.end();
        self.state.send_modify(|s| s.phase = Phase::Failed(error));
    }

    /// The fill is over: it no longer counts as an orphan.
    fn end(&self) {
        let mut i = self.interest.lock().expect("fill interest");
        i.done = true;
        if i.orphaned {
            i.orphaned = false;
            self.limits.orphans_now(-1);
        }
    }
}

fn abandoned() -> RegistryError {
    RegistryError::local("the fill for this blob stopped unexpectedly")
}

/// A client's view of a fill: the bytes written so far, never the last one before verification.
/// While it lives, the fill has someone waiting for it.
pub struct FillReader {
    fill: Arc<Fill>,
    state: watch::Receiver<FillState>,
    pos: u64,
}

impl FillReader {
    /// Whether the fill it reads asks another cluster member ([`Fill::asks_a_member`]).
    pub fn asks_a_member(&self) -> bool {
        self.fill.asks_a_member()
    }
}

impl Drop for FillReader {
    fn drop(&mut self) {
        self.fill.release();
    }
}

impl FillReader {
    /// Wait for the upstream's answer: the length, if known, or why there will be no body.
    pub async fn ready(&self) -> Result<Option<u64>, RegistryError> {
        self.fill.ready().await
    }

    /// Wait for the whole blob to be written and verified; returns its length.
    pub async fn finished(&mut self) -> Result<u64, RegistryError> {
        let s = self
            .state
            .wait_for(|s| matches!(s.phase, Phase::Verified | Phase::Failed(_)))
            .await
            .map_err(|_| abandoned())?;
        match &s.phase {
            Phase::Failed(e) => Err(e.clone()),
            _ => Ok(s.written),
        }
    }

    /// Wait until the blob is in the store; returns its length.
    pub async fn stored(&mut self) -> Result<u64, RegistryError> {
        let digest = self.fill.digest;
        let s = self
            .state
            .wait_for(|s| s.stored.is_some() || matches!(s.phase, Phase::Failed(_)))
            .await
            .map_err(|_| abandoned())?;
        match (&s.phase, s.stored) {
            (Phase::Failed(e), _) => Err(e.clone()),
            (_, Some(true)) => Ok(s.written),
            _ => Err(RegistryError::local(format!(
                "blob {digest} was verified but could not be stored"
            ))),
        }
    }

    /// The file the fill writes into; complete once [`FillReader::finished`] returned.
    pub fn file(&self) -> Arc<File> {
        self.fill.file()
    }

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
                let chunk = read_at(self.fill.file(), self.pos, len)
                    .await
                    .map_err(|e| {
                        RegistryError::local(format!("cannot read the blob being filled: {e}"))
                    })?;
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
    Existing(FillReader),
    /// This request started the fill; the caller must drive it.
    New(Arc<Fill>, FillReader),
}

/// What bounds the fills.
pub struct Limits {
    /// Fills in flight at most.
    pub max_fills: usize,
    /// Fills in flight that no client waits for, at most.
    pub max_orphans: usize,
    orphans: std::sync::atomic::AtomicIsize,
}

impl Limits {
    pub fn new(max_fills: usize, max_orphans: usize) -> Limits {
        Limits {
            max_fills,
            max_orphans,
            orphans: Default::default(),
        }
    }

    /// Add `delta` to the orphans; returns how many there are now.
    fn orphans_now(&self, delta: isize) -> usize {
        use std::sync::atomic::Ordering;
        let now = self.orphans.fetch_add(delta, Ordering::Relaxed) + delta;
        METRICS.orphan_fills.set(now as i64);
        now.max(0) as usize
    }
}

/// The fills in flight, by digest.
pub struct Fills {
    map: Mutex<HashMap<Digest, Arc<Fill>>>,
    limits: Arc<Limits>,
    /// Fills ended so far: one that ends may have put a blob in the store.
    ended: std::sync::atomic::AtomicU64,
}

/// `max_fills` are running: a new one must wait for the client's retry.
#[derive(Debug)]
pub struct Busy(pub usize);

impl Fills {
    pub fn new(limits: Limits) -> Fills {
        Fills {
            map: Mutex::default(),
            limits: Arc::new(limits),
            ended: Default::default(),
        }
    }

    /// Join the running fill for `digest`, or start one unless the store has the blob by now
    /// or `max_fills` are running. The store is looked at off the event loop (a stat can
    /// block), outside the lock; a fill that ended meanwhile may have just committed the blob,
    /// so then it is looked at again rather than fetched twice.
    pub async fn join_or_start(
        &self,
        store: &Arc<dyn ContentStore>,
        digest: &Digest,
    ) -> Result<Joined, Busy> {
        for last in [false, false, true] {
            let ended = {
                let map = self.map.lock().expect("fill map");
                if let Some(f) = map.get(digest) {
                    return Ok(Joined::Existing(f.reader()));
                }
                self.ended.load(std::sync::atomic::Ordering::Acquire)
            };
            let (s, d) = (store.clone(), *digest);
            let stored = tokio::task::spawn_blocking(move || s.contains(Kind::Blob, &d))
                .await
                .unwrap_or(false);
            if stored {
                return Ok(Joined::Stored);
            }
            let mut map = self.map.lock().expect("fill map");
            if let Some(f) = map.get(digest) {
                return Ok(Joined::Existing(f.reader()));
            }
            // fills that keep ending around this one: at worst a blob is written twice
            if last || self.ended.load(std::sync::atomic::Ordering::Acquire) == ended {
                if map.len() >= self.limits.max_fills {
                    METRICS.fills_refused.inc();
                    return Err(Busy(self.limits.max_fills));
                }
                let fill = Arc::new(Fill::new(*digest, self.limits.clone()));
                map.insert(*digest, fill.clone());
                let reader = fill.reader();
                return Ok(Joined::New(fill, reader));
            }
        }
        unreachable!("the last round starts a fill")
    }

    /// The running fill for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.map.lock().expect("fill map").get(digest).cloned()
    }

    /// Forget a fill once it is committed (or failed), so later requests go to the store.
    pub fn remove(&self, digest: &Digest) {
        self.map.lock().expect("fill map").remove(digest);
        self.ended
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Promise `fill` room for `size` bytes (if known) on a disk with `free` bytes, keeping
    /// `keep` free beside what the other fills in flight will still write. Checked and
    /// promised under the map's lock, so that fills starting together cannot all take the
    /// same room. `Err` says how much the others hold.
    pub fn reserve(&self, fill: &Fill, size: Option<u64>, free: u64, keep: u64) -> Result<(), u64> {
        let map = self.map.lock().expect("fill map");
        let promised: u64 = map
            .values()
            .filter(|f| f.digest != fill.digest)
            .map(|f| f.outstanding())
            .sum();
        if free
            < size
                .unwrap_or(0)
                .saturating_add(promised)
                .saturating_add(keep)
        {
            return Err(promised);
        }
        if let Some(n) = size {
            fill.state.send_modify(|s| s.total = Some(n));
        }
        Ok(())
    }

    /// Write what `chunks` delivers into `spool` on `io`, hashing it, publishing
    /// progress as it goes. Holds no thread while it waits for the network: a job on `io`
    /// starts when a chunk arrives and writes on while more are waiting (up to [`JOB_BYTES`],
    /// so that fills share the threads). The disk's free space is looked at as it goes (a
    /// body of unknown length could otherwise fill it): below `keep` the write fails. Returns
    /// the spool, or (once the spool is dropped on `io`) why it could not be written.
    pub async fn write_body(
        io: &FillIo,
        fill: &Arc<Fill>,
        chunks: mpsc::Receiver<Bytes>,
        spool: Spool,
        keep: u64,
    ) -> io::Result<Spool> {
        let mut w = Writer {
            out: spool,
            chunks,
            keep,
            unchecked: 0,
        };
        while let Some(first) = w.chunks.recv().await {
            let f = fill.clone();
            let (back, closed) = io
                .run(move || {
                    let closed = f.write_while_ready(&mut w, first);
                    (w, closed)
                })
                .await;
            w = back;
            match closed {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    io.run(move || drop(w)).await;
                    return Err(e);
                }
            }
        }
        Ok(w.out)
    }
}

/// Bytes one job writes at most before it lets other fills have the thread.
const JOB_BYTES: usize = 8 << 20;

/// Bytes written between two looks at the disk's free space.
const ROOM_CHECK: u64 = 64 << 20;

/// A fill's body on its way to disk: the spool (hashing what it takes), what comes, and the
/// free space the disk must keep.
struct Writer {
    out: Spool,
    chunks: mpsc::Receiver<Bytes>,
    keep: u64,
    /// Bytes written since the free space was last looked at.
    unchecked: u64,
}

impl Writer {
    fn check_room(&mut self) -> io::Result<()> {
        self.unchecked = 0;
        let free = free_space(self.out.dir())?;
        if free < self.keep {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the data directory is down to {free} bytes free (min_free_space {})",
                    self.keep
                ),
            ));
        }
        Ok(())
    }
}

impl Fill {
    /// Write `first` and whatever else has arrived meanwhile; `Ok(true)` when the body is
    /// over. Blocking: runs on [`FillIo`].
    fn write_while_ready(&self, w: &mut Writer, first: Bytes) -> io::Result<bool> {
        let mut chunk = first;
        let mut in_job = 0;
        loop {
            if w.out.is_empty() || w.unchecked >= ROOM_CHECK {
                w.check_room()?;
            }
            w.out.write_all(&chunk)?;
            w.unchecked += chunk.len() as u64;
            in_job += chunk.len();
            self.progress(w.out.len());
            if in_job >= JOB_BYTES {
                return Ok(false);
            }
            chunk = match w.chunks.try_recv() {
                Ok(c) => c,
                Err(mpsc::error::TryRecvError::Empty) => return Ok(false),
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(true),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::DiskStore;

    async fn drain(mut r: FillReader) -> Result<Vec<u8>, RegistryError> {
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk(3).await? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    fn fills() -> Fills {
        Fills::new(Limits::new(2, 1))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn readers_get_every_byte_only_after_verification() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(DiskStore::open(dir.path()).unwrap());
        let store: Arc<dyn ContentStore> = disk.clone();
        let io = FillIo::new(1).unwrap();
        let body = b"hello, wharf".to_vec();
        let digest = Digest::of(&body);
        let Ok(Joined::New(fill, first)) = fills().join_or_start(&store, &digest).await else {
            panic!("expected a new fill")
        };
        let spool = disk.spool(&digest).unwrap();
        fill.spools_into(&spool);
        let reader = tokio::spawn(drain(first));
        fill.start(Some(body.len() as u64));
        let (tx, rx) = mpsc::channel(4);
        for part in body.chunks(5) {
            tx.send(Bytes::copy_from_slice(part)).await.unwrap();
        }
        drop(tx);
        let spool = Fills::write_body(&io, &fill, rx, spool, 0).await.unwrap();
        assert_eq!((spool.hashed(), spool.len()), (digest, body.len() as u64));
        // everything but the last byte may be out; the reader cannot finish yet
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!reader.is_finished());
        fill.verified();
        assert_eq!(reader.await.unwrap().unwrap(), body);
        fill.commit(&*store, spool).unwrap();
        assert!(store.contains(Kind::Blob, &digest));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_fill_stops_before_the_disk_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(DiskStore::open(dir.path()).unwrap());
        let store: Arc<dyn ContentStore> = disk.clone();
        let io = FillIo::new(1).unwrap();
        let Ok(Joined::New(fill, _r)) = fills().join_or_start(&store, &Digest::of(b"x")).await
        else {
            panic!()
        };
        let spool = disk.spool(&Digest::of(b"x")).unwrap();
        fill.spools_into(&spool);
        fill.start(None);
        let (tx, rx) = mpsc::channel(4);
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        drop(tx);
        // keep more free than any disk has: the first write is refused
        let e = Fills::write_body(&io, &fill, rx, spool, u64::MAX)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(e.to_string().contains("min_free_space"), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "the spool is gone"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_fill_cuts_readers_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(DiskStore::open(dir.path()).unwrap());
        let store: Arc<dyn ContentStore> = disk.clone();
        let digest = Digest::of(b"x");
        let fills = fills();
        let Ok(Joined::New(fill, first)) = fills.join_or_start(&store, &digest).await else {
            panic!()
        };
        let spool = disk.spool(&digest).unwrap();
        fill.spools_into(&spool);
        assert!(matches!(
            fills.join_or_start(&store, &digest).await,
            Ok(Joined::Existing(_))
        ));
        let reader = tokio::spawn(drain(first));
        fill.start(Some(10));
        fill.fail(RegistryError::upstream_failed("digest mismatch"));
        drop(spool);
        assert!(reader.await.unwrap().is_err());
        assert!(!store.contains(Kind::Blob, &digest));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn room_on_disk_is_promised_once() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(DiskStore::open(dir.path()).unwrap());
        let store: Arc<dyn ContentStore> = disk.clone();
        let fills = Fills::new(Limits::new(4, 4));
        let Ok(Joined::New(a, _ra)) = fills.join_or_start(&store, &Digest::of(b"a")).await else {
            panic!()
        };
        let Ok(Joined::New(b, _rb)) = fills.join_or_start(&store, &Digest::of(b"b")).await else {
            panic!()
        };
        // 10 bytes free, 2 to keep: a takes 5 before either has started streaming
        assert_eq!(fills.reserve(&a, Some(5), 10, 2), Ok(()));
        assert_eq!(fills.reserve(&b, Some(5), 10, 2), Err(5));
        assert_eq!(fills.reserve(&b, Some(3), 10, 2), Ok(()));
        // unknown lengths need what is kept, beside what is promised
        assert_eq!(fills.reserve(&b, None, 7, 2), Ok(()));
        assert_eq!(fills.reserve(&b, None, 6, 2), Err(5));
    }

    #[tokio::test]
    async fn fills_are_bounded_and_orphans_too() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(DiskStore::open(dir.path()).unwrap());
        let store: Arc<dyn ContentStore> = disk.clone();
        let fills = fills(); // 2 fills, 1 orphan
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let Ok(Joined::New(fa, ra)) = fills.join_or_start(&store, &a).await else {
            panic!()
        };
        let Ok(Joined::New(fb, rb)) = fills.join_or_start(&store, &b).await else {
            panic!()
        };
        assert!(matches!(
            fills.join_or_start(&store, &c).await,
            Err(Busy(2))
        ));
        // joining a running fill is no new fill
        let Ok(Joined::Existing(ra2)) = fills.join_or_start(&store, &a).await else {
            panic!()
        };
        drop(ra);
        assert!(!fa.is_orphaned(), "one reader is left");
        drop(ra2);
        assert!(fa.is_orphaned());
        // the first orphan is kept; the second is one too many and is told to give up
        drop(rb);
        assert!(fb.is_orphaned());
        let told = fb.abandon.notified();
        futures_util::pin_mut!(told);
        assert!(futures_util::FutureExt::now_or_never(&mut told).is_some());
        // a client coming back adopts the orphan
        let Ok(Joined::Existing(_again)) = fills.join_or_start(&store, &a).await else {
            panic!()
        };
        assert!(!fa.is_orphaned());
        // ...and one told to give up while orphaned is not given up once adopted
        let Ok(Joined::Existing(b_again)) = fills.join_or_start(&store, &b).await else {
            panic!()
        };
        let told = fb.abandoned();
        futures_util::pin_mut!(told);
        assert!(futures_util::FutureExt::now_or_never(&mut told).is_none());
        drop(b_again);
        fills.remove(&a);
        assert!(matches!(
            fills.join_or_start(&store, &c).await,
            Ok(Joined::New(..))
        ));
    }
}
