//! The content store on disk: every manifest and blob wharf has verified, one file per digest.
//!
//! Files only ever appear under their digest by `rename` from `tmp/`, after their bytes were
//! hashed and fsynced, so whatever a crash leaves behind is either complete and verified or in
//! `tmp/`, which is emptied at startup.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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

/// A content-addressed directory: `<root>/{blobs,manifests}/sha256/<hex>` plus `<root>/tmp/`.
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Open (creating if needed) the store at `root`, removing temp files an earlier run left.
    pub fn open(root: &Path) -> io::Result<Self> {
        for kind in [Kind::Manifest, Kind::Blob] {
            fs::create_dir_all(root.join(kind.dir()).join("sha256"))?;
        }
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!("cannot remove leftover {}: {e}", entry.path().display());
            }
        }
        Ok(BlobStore {
            root: root.to_owned(),
        })
    }

    pub fn path(&self, kind: Kind, digest: &Digest) -> PathBuf {
        self.root.join(kind.dir()).join("sha256").join(digest.hex())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_open_and_tmp_is_cleaned() {
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
        BlobStore::open(dir.path()).unwrap();
        assert!(!tmp.exists(), "leftover temp files are removed at startup");
        assert!(store.contains(Kind::Blob, &d));
    }
}
