//! The content store on disk: one file per digest, `<root>/{blobs,manifests}/sha256/<hex>`.
//!
//! Files only ever appear under their digest by `rename` from `tmp/`, after their bytes were
//! hashed, found to match and fsynced, so whatever a crash leaves behind is either complete
//! and verified or in `tmp/`, which the server empties at start. A [`Spool`] is such a temp
//! file: fills write into one while their clients read it as it grows, imports stage in them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    found, mismatch, ContentStore, Hashing, Kind, Object, ObjectBytes, Stored, Upload, Use,
};
use crate::registry::Digest;

/// How stale a file's mtime may get before a hit refreshes it: the disk's record of recency,
/// which outlives restarts, at the cost of one write per object per hour at most.
pub const TOUCH_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Where the temp files of an earlier run wait for removal: `<root>/tmp.old-<random>`.
const LEFTOVERS: &str = "tmp.old-";

/// A content-addressed directory: `<root>/{blobs,manifests}/sha256/<hex>` plus `<root>/tmp/`.
pub struct DiskStore {
    root: PathBuf,
}

impl DiskStore {
    /// Open (creating if needed) the store at `root`. What an earlier run left in `tmp/` is
    /// the server's to clear ([`DiskStore::sweep_leftovers`]): a command run beside a server
    /// must not remove the files of its fills in flight.
    pub fn open(root: &Path) -> io::Result<Self> {
        for kind in [Kind::Manifest, Kind::Blob] {
            fs::create_dir_all(root.join(kind.dir()).join("sha256"))?;
        }
        fs::create_dir_all(root.join("tmp"))?;
        Ok(DiskStore {
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

    /// Where an object lives. Only this store knows objects are files.
    fn path(&self, kind: Kind, digest: &Digest) -> PathBuf {
        self.root.join(kind.dir()).join("sha256").join(digest.hex())
    }

    /// Bytes an unprivileged writer may still put in the data directory. Blocking.
    pub fn free_space(&self) -> io::Result<u64> {
        free_space(&self.root)
    }

    /// A new, empty spool for `digest` in `tmp/`. Blocking.
    pub fn spool(&self, digest: &Digest) -> io::Result<Spool> {
        let path =
            self.root
                .join("tmp")
                .join(format!("{}.{:016x}", digest.hex(), rand::random::<u64>()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let file = Arc::new(file);
        Ok(Spool {
            digest: *digest,
            out: Hashing::new(FileAt {
                file: file.clone(),
                offset: 0,
            }),
            file,
            path: Some(path),
        })
    }
}

impl ContentStore for DiskStore {
    fn stat(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Stored>> {
        let Some(meta) = found(fs::metadata(self.path(kind, digest)))? else {
            return Ok(None);
        };
        Ok(Some(Stored {
            kind,
            digest: *digest,
            size: meta.len(),
            modified: meta.modified()?,
        }))
    }

    /// An object served whose mtime is older than [`TOUCH_AFTER`] gets the current time.
    fn open(&self, kind: Kind, digest: &Digest, usage: Use) -> io::Result<Option<Object>> {
        let Some(file) = found(File::open(self.path(kind, digest)))? else {
            return Ok(None);
        };
        let meta = file.metadata()?;
        if usage == Use::Serve {
            let now = std::time::SystemTime::now();
            let stale = meta
                .modified()
                .is_ok_and(|m| now.duration_since(m).unwrap_or_default() > TOUCH_AFTER);
            if stale {
                let _ = file.set_modified(now);
            }
        }
        Ok(Some(Object::file(Arc::new(file), meta.len())))
    }

    fn begin(&self, kind: Kind, digest: &Digest) -> io::Result<Box<dyn Upload>> {
        Ok(Box::new(DiskUpload {
            spool: self.spool(digest)?,
            dest: self.path(kind, digest),
        }))
    }

    fn remove(&self, kind: Kind, digest: &Digest) -> io::Result<bool> {
        Ok(found(fs::remove_file(self.path(kind, digest)))?.is_some())
    }

    fn list(&self) -> io::Result<Vec<Stored>> {
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

    fn location(&self, kind: Kind, digest: &Digest) -> String {
        self.path(kind, digest).display().to_string()
    }

    /// The spool is renamed into place (it is on this disk).
    fn adopt(&self, kind: Kind, spool: Spool) -> io::Result<()> {
        let dest = self.path(kind, &spool.digest);
        spool.settle(&dest)
    }

    fn contains(&self, kind: Kind, digest: &Digest) -> bool {
        self.path(kind, digest).exists()
    }

    fn read(&self, kind: Kind, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        found(fs::read(self.path(kind, digest)))
    }
}

/// One object on its way into the store, in a temp file of its own: hashed as it is written,
/// readable (through [`Spool::file`]) while it grows, and stored only if it hashes to its
/// digest ([`ContentStore::adopt`]). Dropped, it removes its file (readers that have it open
/// read on).
pub struct Spool {
    pub digest: Digest,
    out: Hashing<FileAt>,
    file: Arc<File>,
    /// `None` once the file has been moved into the store.
    path: Option<PathBuf>,
}

impl Spool {
    /// The temp file, for reading what has been written so far.
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// The digest of what has been written so far.
    pub fn hashed(&self) -> Digest {
        self.out.digest()
    }

    /// Where the spool is, on the file system that `free_space` must look at.
    pub fn dir(&self) -> &Path {
        self.path
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
    }

    /// The whole spool as a reader, from its start.
    pub fn reader(&self) -> io::Result<Box<dyn io::Read + Send>> {
        FileBytes(self.file.clone()).reader()
    }

    /// If the bytes match the digest: fsync them, rename the file to `dest`, fsync the
    /// directory. Blocking.
    fn settle(mut self, dest: &Path) -> io::Result<()> {
        let got = self.hashed();
        if got != self.digest {
            return Err(mismatch(&self.digest, &got));
        }
        self.file.sync_all()?;
        let tmp = self.path.take().expect("a spool is settled once");
        if let Err(e) = fs::rename(&tmp, dest) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        File::open(dest.parent().expect("object paths have a parent"))?.sync_all()
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "spool of {} ({} bytes)", self.digest, self.len())
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// [`ContentStore::begin`] on disk: a spool and where it goes.
struct DiskUpload {
    spool: Spool,
    dest: PathBuf,
}

impl Write for DiskUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.spool.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload for DiskUpload {
    fn commit(self: Box<Self>) -> io::Result<u64> {
        let len = self.spool.len();
        self.spool.settle(&self.dest)?;
        Ok(len)
    }
}

/// The bytes of a local file.
pub(super) struct FileBytes(pub Arc<File>);

#[async_trait]
impl ObjectBytes for FileBytes {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        read_at(self.0.clone(), offset, len).await
    }

    fn reader(&self) -> io::Result<Box<dyn io::Read + Send>> {
        Ok(Box::new(FileReader {
            file: self.0.clone(),
            offset: 0,
        }))
    }
}

/// A file read from its start, by offset (`pread`), so that other readers are not disturbed.
struct FileReader {
    file: Arc<File>,
    offset: u64,
}

impl io::Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&*self.file, buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
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

/// A file written at an offset that moves on with each write (`pwrite`, so that readers of
/// the same file are not disturbed).
struct FileAt {
    file: Arc<File>,
    offset: u64,
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

    #[tokio::test]
    async fn the_disk_is_a_content_store() {
        let dir = tempfile::tempdir().unwrap();
        super::super::conformance::check(Arc::new(DiskStore::open(dir.path()).unwrap())).await;
    }

    #[test]
    fn removed_objects_read_on_and_wrong_spools_are_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");
        store.write(Kind::Blob, &d, b"hello").unwrap();
        let object = store.open(Kind::Blob, &d, Use::Serve).unwrap().unwrap();
        assert!(store.remove(Kind::Blob, &d).unwrap());
        let mut rest = Vec::new();
        io::Read::read_to_end(&mut object.reader().unwrap(), &mut rest).unwrap();
        assert_eq!(
            rest, b"hello",
            "an open object reads to its end after removal"
        );

        let mut spool = store.spool(&d).unwrap();
        spool.write_all(b"hellO").unwrap();
        assert_eq!(
            store.adopt(Kind::Blob, spool).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert!(!store.contains(Kind::Blob, &d));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let mut spool = store.spool(&d).unwrap();
        spool.write_all(b"hello").unwrap();
        store.adopt(Kind::Blob, spool).unwrap();
        assert!(store.contains(Kind::Blob, &d));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn leftovers_are_swept_by_the_server_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");
        store.write(Kind::Blob, &d, b"hello").unwrap();
        let tmp = dir.path().join("tmp").join(format!("{}.0", d.hex()));
        fs::write(&tmp, b"hel").unwrap(); // as a killed run leaves it
        let again = DiskStore::open(dir.path()).unwrap();
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
