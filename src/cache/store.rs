//! The content store on disk: every manifest and blob wharf has verified, one file per digest.
//!
//! Files only ever appear under their digest by `rename` from `tmp/`, after their bytes were
//! hashed and fsynced, so whatever a crash leaves behind is either complete and verified or in
//! `tmp/`, which is emptied at startup.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::registry::Digest;

/// Manifests and blobs live apart: a digest asked for as a manifest must be one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Manifest,
    Blob,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Manifest => "manifests",
            Kind::Blob => "blobs",
        }
    }
}

/// One stored object, as found by a scan.
pub struct Stored {
    pub kind: Kind,
    pub digest: Digest,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

/// Where the temp files of an earlier run wait for removal: `<root>/tmp.old-<random>`.
const LEFTOVERS: &str = "tmp.old-";

/// A content-addressed directory: `<root>/{blobs,manifests}/sha256/<hex>` plus `<root>/tmp/`.
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Open (creating if needed) the store at `root`. What an earlier run left in `tmp/` is
    /// the server's to clear ([`BlobStore::sweep_leftovers`]): a command run beside a server
    /// must not remove the files of its fills in flight.
    pub fn open(root: &Path) -> io::Result<Self> {
        for kind in [Kind::Manifest, Kind::Blob] {
            fs::create_dir_all(root.join(kind.dir()).join("sha256"))?;
        }
        fs::create_dir_all(root.join("tmp"))?;
        Ok(BlobStore {
            root: root.to_owned(),
        })
    }

    /// Set aside the temp files an earlier run left (one rename, so that serving starts at
    /// once) and remove them on a thread of their own. For the server, at start.
    pub fn sweep_leftovers(&self) -> io::Result<()> {
        let tmp = self.root.join("tmp");
        if fs::read_dir(&tmp)?.next().is_some() {
            let aside = self
                .root
                .join(format!("{LEFTOVERS}{:016x}", rand::random::<u64>()));
            fs::rename(&tmp, &aside)?;
            fs::create_dir_all(&tmp)?;
        }
        let root = self.root.clone();
        std::thread::Builder::new()
            .name("wharf-sweep".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let (mut files, mut bytes) = (0u64, 0u64);
                for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
                    if !entry.file_name().to_string_lossy().starts_with(LEFTOVERS) {
                        continue;
                    }
                    for f in fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                        let size = f.metadata().map_or(0, |m| m.len());
                        if fs::remove_file(f.path()).is_ok() {
                            files += 1;
                            bytes += size;
                        }
                    }
                    if let Err(e) = fs::remove_dir_all(entry.path()) {
                        tracing::warn!("cannot remove {}: {e}", entry.path().display());
                    }
                }
                if files > 0 {
                    tracing::info!(
                        "removed {files} temp files ({bytes} bytes) an earlier run left, in {:?}",
                        started.elapsed()
                    );
                }
            })?;
        Ok(())
    }

    /// Where an object lives. Only this store knows objects are files; everyone else asks it
    /// for their bytes, size or removal, so that another store (a bucket) can stand in.
    fn path(&self, kind: Kind, digest: &Digest) -> PathBuf {
        self.root.join(kind.dir()).join("sha256").join(digest.hex())
    }

    /// Where an object is, for messages to the operator.
    pub fn location(&self, kind: Kind, digest: &Digest) -> String {
        self.path(kind, digest).display().to_string()
    }

    /// A small stored object (a manifest) whole; `None` if it is not stored. Blocking.
    pub fn read(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(kind, digest)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An object's size and last use; `None` if it is not stored. Blocking.
    pub fn stat(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Stored>> {
        match fs::metadata(self.path(kind, digest)) {
            Ok(meta) => Ok(Some(Stored {
                kind,
                digest: *digest,
                size: meta.len(),
                modified: meta.modified()?,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove an object; one that is not there is no error. Blocking.
    pub fn remove(&self, kind: Kind, digest: &Digest) -> io::Result<bool> {
        match fs::remove_file(self.path(kind, digest)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Open a stored object for reading, with its size; `None` if it is not stored. An object
    /// whose mtime is older than `touch_after` gets the current time, which keeps recency on
    /// disk for the quota's next restart. Blocking.
    pub fn open_object(
        &self,
        kind: Kind,
        digest: &Digest,
        touch_after: std::time::Duration,
    ) -> io::Result<Option<(File, u64)>> {
        let file = match File::open(self.path(kind, digest)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let now = std::time::SystemTime::now();
        let stale = meta
            .modified()
            .is_ok_and(|m| now.duration_since(m).unwrap_or_default() > touch_after);
        if stale {
            let _ = file.set_modified(now);
        }
        Ok(Some((file, meta.len())))
    }

    /// Every stored object (names that are not digests are skipped). Blocking.
    pub fn list(&self) -> io::Result<Vec<Stored>> {
        let mut out = Vec::new();
        for kind in [Kind::Manifest, Kind::Blob] {
            for entry in fs::read_dir(self.root.join(kind.dir()).join("sha256"))? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(digest) = name
                    .to_str()
                    .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
                else {
                    continue;
                };
                let meta = entry.metadata()?;
                out.push(Stored {
                    kind,
                    digest,
                    size: meta.len(),
                    modified: meta.modified()?,
                });
            }
        }
        Ok(out)
    }

    /// Bytes an unprivileged writer may still put in the data directory. Blocking.
    pub fn free_space(&self) -> io::Result<u64> {
        free_space(&self.root)
    }

    pub fn contains(&self, kind: Kind, digest: &Digest) -> bool {
        self.path(kind, digest).exists()
    }

    /// A new empty temp file (read-write) for an object being filled. Blocking.
    pub fn temp_file(&self, digest: &Digest) -> io::Result<(File, PathBuf)> {
        let path =
            self.root
                .join("tmp")
                .join(format!("{}.{:016x}", digest.hex(), rand::random::<u64>()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((file, path))
    }

    /// Make a fully written and verified temp file the stored object: fsync it, rename it into
    /// place, fsync the directory. Blocking.
    pub fn commit(&self, tmp: &Path, file: &File, kind: Kind, digest: &Digest) -> io::Result<()> {
        file.sync_all()?;
        let dest = self.path(kind, digest);
        fs::rename(tmp, &dest)?;
        File::open(dest.parent().expect("object paths have a parent"))?.sync_all()
    }

    /// Store a small object held in memory (a manifest) whose digest was already checked.
    /// Blocking.
    pub fn write(&self, kind: Kind, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        let (mut file, tmp) = self.temp_file(digest)?;
        let result = file
            .write_all(bytes)
            .and_then(|_| self.commit(&tmp, &file, kind, digest));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Bytes an unprivileged writer may still put on the filesystem holding `path`. Blocking.
pub fn free_space(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid C string and `st` points at memory for one statvfs, which the call
    // fills when it returns 0.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Content on its way somewhere, hashed as it passes: the one way wharf checks bytes against
/// their digest while it moves them (a fill writing a download, an import, `verify`).
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

/// A file written at an offset that moves on with each write (`pwrite`, so that readers of
/// the same file are not disturbed).
pub struct FileAt {
    pub file: Arc<File>,
    pub offset: u64,
}

impl Write for FileAt {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::write_at(&*self.file, buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Read exactly `len` bytes of `file` at `offset`.
///
/// Stored and growing files are nearly always in the page cache, where a read is a memory copy
/// that takes less time than handing it to another thread: so it is first tried right here,
/// with `RWF_NOWAIT`, which makes the kernel refuse rather than wait for the disk. Only what is
/// not cached goes to the blocking pool. The buffer is not zeroed first: the read fills it.
pub async fn read_at(file: Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len);
    if let Ok(n) = pread(&file, &mut buf, offset, libc::RWF_NOWAIT) {
        if n == len {
            return Ok(Bytes::from(buf));
        }
    }
    tokio::task::spawn_blocking(move || {
        while buf.len() < len {
            match pread(&file, &mut buf, offset, 0) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

/// One `preadv2` into the spare capacity of `buf`, at `offset` plus what `buf` already holds;
/// the bytes read are appended to `buf`.
fn pread(file: &File, buf: &mut Vec<u8>, offset: u64, flags: libc::c_int) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    let at = (offset + buf.len() as u64) as libc::off_t;
    // SAFETY: the iovec points at `buf`'s spare capacity, which outlives the call, and the
    // kernel writes at most `iov_len` bytes there; only those it reports are marked as set.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_open_and_leftovers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");
        assert!(store
            .open_object(Kind::Blob, &d, std::time::Duration::ZERO)
            .unwrap()
            .is_none());
        store.write(Kind::Blob, &d, b"hello").unwrap();
        let (_, len) = store
            .open_object(Kind::Blob, &d, std::time::Duration::ZERO)
            .unwrap()
            .unwrap();
        assert_eq!(len, 5);
        assert!(!store.contains(Kind::Manifest, &d));
        let (_f, tmp) = store.temp_file(&d).unwrap();
        assert!(tmp.exists());
        let again = BlobStore::open(dir.path()).unwrap();
        assert!(
            tmp.exists(),
            "opening the store (as commands do) leaves temp files alone"
        );
        again.sweep_leftovers().unwrap();
        assert!(
            !tmp.exists(),
            "the server sets leftover temp files aside at once"
        );
        for _ in 0..100 {
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            if !names.iter().any(|n| n.starts_with(LEFTOVERS)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(store.contains(Kind::Blob, &d));
    }

    #[tokio::test]
    async fn read_at_reads_exactly_or_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        assert_eq!(&read_at(file.clone(), 2, 5).await.unwrap()[..], b"23456");
        assert_eq!(
            &read_at(file.clone(), 0, 10).await.unwrap()[..],
            b"0123456789"
        );
        // a short read continues on the blocking pool, which finds the end of the file
        let e = read_at(file, 5, 10).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }
}
