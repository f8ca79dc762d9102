//! `wharf export` and `wharf import`: the cache (or some images in it) as an OCI image layout —
//! a directory, or a tar when the path ends in `.tar` — for sites that run on a cache filled
//! somewhere else. Tags travel as index annotations (`io.containerd.image.name` with the full
//! reference, `org.opencontainers.image.ref.name` with the tag), so `ctr import` reads the same
//! file. Import verifies every digest before anything is stored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use indicatif::ProgressBar;
use serde_json::{json, Value};

use crate::cache::store::Spool;
use crate::cache::tags::Share;
use crate::cache::{Cache, Kind, TagEntry, Use};
use crate::registry::image;
use crate::registry::media::{self, Accept};
use crate::registry::{Digest, ImageRef, Reference};

const FULL_NAME: &str = "io.containerd.image.name";
/// Which repositories hold which of the exported objects (beside the OCI layout, which has no
/// place for it): `{"registry/repository": ["sha256:…", …]}`.
const LINKS_FILE: &str = "wharf-links.json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A top-level manifest in the layout's index.json.
struct Entry {
    digest: Digest,
    media_type: String,
    size: u64,
    name: Option<ImageRef>,
}

pub struct Exported {
    pub images: usize,
    pub objects: usize,
    pub bytes: u64,
}

/// Write `images` (every tag and object in the cache when empty) to `out`. Blocking.
pub fn export(cache: &Cache, out: &Path, images: &[ImageRef]) -> Result<Exported, String> {
    let mut entries = top_entries(cache, images)?;
    let objects = objects_to_export(cache, &mut entries, images.is_empty())?;
    let files = [
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json", index_json(&entries).into_bytes()),
        (LINKS_FILE, links_json(cache, &objects).into_bytes()),
    ];
    let bytes = write_layout(cache, out, &objects, &files)?;
    Ok(Exported {
        images: entries.iter().filter(|e| e.name.is_some()).count(),
        objects: objects.len(),
        bytes,
    })
}

/// A stored manifest's media type and bytes, or why it cannot be exported.
fn stored_manifest(cache: &Cache, d: &Digest) -> Result<(String, Vec<u8>), String> {
    let bytes = match cache.store.read(Kind::Manifest, d) {
        Ok(Some(b)) => b,
        Ok(None) => return Err(format!("manifest {d} is not cached: run wharf warm first")),
        Err(e) => return Err(format!("cannot read manifest {d}: {e}")),
    };
    let t = media::manifest_type(&bytes).unwrap_or_else(|| media::OCI_MANIFEST.to_owned());
    Ok((t, bytes))
}

/// The index's entries: `images`, or every cached tag (its preferred manifest) when empty.
fn top_entries(cache: &Cache, images: &[ImageRef]) -> Result<Vec<Entry>, String> {
    let entry = |digest: Digest, name: ImageRef| -> Result<Entry, String> {
        let (media_type, bytes) = stored_manifest(cache, &digest)?;
        Ok(Entry {
            digest,
            media_type,
            size: bytes.len() as u64,
            name: Some(name),
        })
    };
    let mut entries = Vec::new();
    if images.is_empty() {
        for (registry, repo, tag, record) in cache.tags.all() {
            let Some(e) = preferred(&record.by_accept) else {
                continue;
            };
            let name = ImageRef {
                registry,
                name: repo,
                reference: Reference::Tag(tag),
            };
            // a tag whose manifest is gone is left out of a full export
            if let Ok(e) = entry(e.digest, name) {
                entries.push(e);
            }
        }
        return Ok(entries);
    }
    for image in images {
        let d = match &image.reference {
            Reference::Digest(d) => *d,
            Reference::Tag(t) => cache
                .tags
                .get(&image.registry, &image.name, t)
                .and_then(|r| preferred(&r.by_accept).map(|e| e.digest))
                .ok_or_else(|| format!("{image} is not cached: run wharf warm first"))?,
        };
        entries.push(entry(d, image.clone())?);
    }
    Ok(entries)
}

/// Everything the entries reach; for a full export (`all`) every stored object too, manifests
/// pulled by digest only becoming entries of their own. Each must be in the store.
fn objects_to_export(
    cache: &Cache,
    entries: &mut Vec<Entry>,
    all: bool,
) -> Result<BTreeMap<Digest, Kind>, String> {
    let store = &cache.store;
    let top: Vec<Digest> = entries.iter().map(|e| e.digest).collect();
    let reached = image::walk(&top, |d| {
        let (t, bytes) = stored_manifest(cache, d)?;
        let r = image::refs(&t, &bytes).map_err(|e| format!("manifest {d}: {e}"))?;
        Ok::<_, String>(Some(r))
    })?;
    let mut objects: BTreeMap<Digest, Kind> = BTreeMap::new();
    for d in reached.blobs {
        objects.insert(d, Kind::Blob);
    }
    for d in reached.manifests {
        objects.insert(d, Kind::Manifest);
    }
    if all {
        let stored = store
            .list()
            .map_err(|e| format!("cannot list the store: {e}"))?;
        for o in stored {
            if o.kind == Kind::Manifest && !objects.contains_key(&o.digest) {
                // pulled by digest only: keep it a manifest on the other side
                let (t, bytes) = stored_manifest(cache, &o.digest)?;
                entries.push(Entry {
                    digest: o.digest,
                    media_type: t,
                    size: bytes.len() as u64,
                    name: None,
                });
            }
            objects.entry(o.digest).or_insert(o.kind);
        }
    }
    for (d, kind) in &objects {
        if !store.contains(*kind, d) {
            return Err(format!(
                "{d} is not cached (evicted?): run wharf warm first"
            ));
        }
    }
    Ok(objects)
}

/// Write `objects` and the layout's own `files` to `out`, a directory or (`.tar`) a tar;
/// returns the bytes of the objects.
fn write_layout(
    cache: &Cache,
    out: &Path,
    objects: &BTreeMap<Digest, Kind>,
    files: &[(&str, Vec<u8>)],
) -> Result<u64, String> {
    let store = &cache.store;
    let bar = super::progress(objects.len() as u64, "exporting", false);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:30!} [{bar:30}] {pos}/{len} objects")
            .expect("template"),
    );
    let mut bytes = 0;
    let tar = out.extension().is_some_and(|e| e == "tar");
    let mut writer = if tar {
        let f = File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        Some(tar::Builder::new(f))
    } else {
        fs::create_dir_all(out.join("blobs/sha256"))
            .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        None
    };
    let io_err = |e: io::Error| format!("cannot write {}: {e}", out.display());
    for (d, kind) in objects {
        // an export is no use: recency stays as it was
        let Some(object) = store
            .open(*kind, d, Use::Inspect)
            .map_err(|e| format!("cannot read {d}: {e}"))?
        else {
            return Err(format!(
                "{d} is not cached (evicted?): run wharf warm first"
            ));
        };
        let len = object.len;
        let mut src = object
            .reader()
            .map_err(|e| format!("cannot read {d}: {e}"))?;
        let name = format!("blobs/sha256/{}", d.hex());
        match &mut writer {
            Some(t) => t
                .append_data(&mut tar_header(len), &name, &mut src)
                .map_err(io_err)?,
            None => {
                let dest = out.join(&name);
                if !dest.exists() {
                    let mut to = File::create(&dest).map_err(io_err)?;
                    io::copy(&mut src, &mut to).map_err(io_err)?;
                }
            }
        }
        bytes += len;
        bar.inc(1);
    }
    bar.finish_and_clear();
    match writer {
        Some(mut t) => {
            for (name, data) in files {
                let mut h = tar_header(data.len() as u64);
                t.append_data(&mut h, name, &data[..]).map_err(io_err)?;
            }
            t.into_inner().and_then(|f| f.sync_all()).map_err(io_err)?;
        }
        None => {
            for (name, data) in files {
                fs::write(out.join(name), data).map_err(io_err)?;
            }
        }
    }
    Ok(bytes)
}

/// The header of a file of `len` bytes in an exported tar (no owner, no time: the same
/// content makes the same tar).
fn tar_header(len: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(len);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    h
}

/// The links of the exported objects, as [`LINKS_FILE`] holds them.
fn links_json(cache: &Cache, objects: &BTreeMap<Digest, Kind>) -> String {
    let mut out = serde_json::Map::new();
    for (registry, repo, digests) in cache.links.all() {
        let held: Vec<Value> = digests
            .iter()
            .filter(|d| objects.contains_key(d))
            .map(|d| Value::String(d.to_string()))
            .collect();
        if !held.is_empty() {
            out.insert(format!("{registry}/{repo}"), Value::Array(held));
        }
    }
    serde_json::to_string_pretty(&Value::Object(out)).expect("links serialize")
}

/// The mapping to carry for a tag: an index when there is one (it serves every platform),
/// else the most recently confirmed.
fn preferred(by_accept: &BTreeMap<String, TagEntry>) -> Option<&TagEntry> {
    by_accept
        .values()
        .max_by_key(|e| (media::is_index(&e.media_type), e.checked))
}

fn index_json(entries: &[Entry]) -> String {
    let manifests: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v =
                json!({"mediaType": e.media_type, "digest": e.digest.to_string(), "size": e.size});
            if let Some(n) = &e.name {
                let tag = match &n.reference {
                    Reference::Tag(t) => t.to_string(),
                    Reference::Digest(d) => d.to_string(),
                };
                v["annotations"] = json!({FULL_NAME: n.to_string(), REF_NAME: tag});
            }
            v
        })
        .collect();
    serde_json::to_string_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    }))
    .expect("index serializes")
}

pub struct Imported {
    pub objects: usize,
    pub bytes: u64,
    pub tags: Vec<String>,
    /// Objects whose content did not match their name: not imported.
    pub rejected: Vec<String>,
}

/// Load the layout at `path` (directory or `.tar`) into the store, verifying every digest, and
/// record its tags. Blocking.
pub fn import(cache: &Cache, path: &Path) -> Result<Imported, String> {
    let mut staged = Staged::default();
    let bar = super::progress(0, "importing", false);
    if path.is_dir() {
        staged.read_dir(cache, path, &bar)?;
    } else {
        staged.read_tar(cache, path, &bar)?;
    }
    bar.finish_and_clear();
    let index = staged.index.take().ok_or("the layout has no index.json")?;
    let index: Value = serde_json::from_slice(&index).map_err(|e| format!("index.json: {e}"))?;
    let top = index["manifests"].as_array().cloned().unwrap_or_default();
    let manifests = staged.manifests(cache, &top);
    let (objects, bytes) = staged.commit(cache, &manifests)?;
    let tags = record_tags(cache, &top)?;
    record_links(cache, staged.links.as_deref())?;
    cache.link_tagged();
    Ok(Imported {
        objects,
        bytes,
        tags,
        rejected: staged.rejected,
    })
}

/// What an import has read so far: verified objects in the temp directory, those that did
/// not match their digest, and the layout's index and links.
#[derive(Default)]
struct Staged {
    pending: HashMap<Digest, Spool>,
    rejected: Vec<String>,
    index: Option<Vec<u8>>,
    links: Option<Vec<u8>>,
}

impl Staged {
    fn read_dir(&mut self, cache: &Cache, path: &Path, bar: &ProgressBar) -> Result<(), String> {
        let mut f = File::open(path.join("index.json"))
            .map_err(|e| format!("{}: not an OCI layout ({e})", path.display()))?;
        self.take(cache, bar, "index.json", &mut f)?;
        if let Ok(mut f) = File::open(path.join(LINKS_FILE)) {
            self.take(cache, bar, LINKS_FILE, &mut f)?;
        }
        let dir = path.join("blobs/sha256");
        for entry in
            fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        {
            let entry = entry.map_err(|e| e.to_string())?;
            let name = format!("blobs/sha256/{}", entry.file_name().to_string_lossy());
            let mut f = File::open(entry.path()).map_err(|e| format!("cannot read {name}: {e}"))?;
            self.take(cache, bar, &name, &mut f)?;
        }
        Ok(())
    }

    fn read_tar(&mut self, cache: &Cache, path: &Path, bar: &ProgressBar) -> Result<(), String> {
        let f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut archive = tar::Archive::new(f);
        for entry in archive
            .entries()
            .map_err(|e| format!("{}: not a tar ({e})", path.display()))?
        {
            let mut entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            let name = entry
                .path()
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .into_owned();
            self.take(cache, bar, &name, &mut entry)?;
        }
        Ok(())
    }

    /// Take one file of the layout: the index or links are kept, an object is copied into
    /// the temp directory while hashed (and kept only if it is what its name says).
    fn take(
        &mut self,
        cache: &Cache,
        bar: &ProgressBar,
        name: &str,
        reader: &mut dyn Read,
    ) -> Result<(), String> {
        let name = name.trim_start_matches("./");
        if name == "index.json" || name == LINKS_FILE {
            let mut buf = Vec::new();
            reader
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot read {name}: {e}"))?;
            match name {
                "index.json" => self.index = Some(buf),
                _ => self.links = Some(buf),
            }
            return Ok(());
        }
        let Some(hex) = name.strip_prefix("blobs/sha256/") else {
            return Ok(());
        };
        let Ok(want) = Digest::parse(&format!("sha256:{hex}")) else {
            return Ok(());
        };
        let mut spool = cache
            .disk
            .spool(&want)
            .map_err(|e| format!("cannot write the store: {e}"))?;
        io::copy(&mut bar.wrap_read(reader), &mut spool)
            .map_err(|e| format!("cannot copy {name} into the store: {e}"))?;
        if spool.hashed() == want {
            self.pending.insert(want, spool);
        } else {
            self.rejected
                .push(format!("{want}: content does not match its digest"));
        }
        Ok(())
    }

    /// Which objects are manifests: the index's entries and every manifest they reach (read
    /// from what was staged, or from the store).
    fn manifests(&self, cache: &Cache, top: &[Value]) -> HashSet<Digest> {
        let read = |p: &Spool| -> Vec<u8> {
            let mut buf = vec![0u8; p.len().min(media::MAX_MANIFEST_BYTES as u64) as usize];
            let _ = std::os::unix::fs::FileExt::read_exact_at(&*p.file(), &mut buf, 0);
            buf
        };
        let stored = |d: &Digest| cache.store.read(Kind::Manifest, d).ok().flatten();
        let top: Vec<Digest> = top
            .iter()
            .filter_map(|m| Digest::parse(m["digest"].as_str()?).ok())
            .collect();
        let reached = image::walk_stored(&top, |d| {
            self.pending.get(d).map(read).or_else(|| stored(d))
        });
        reached.manifests.into_iter().collect()
    }

    /// Move the staged objects into the store (those it has already are dropped); the count
    /// and bytes stored.
    fn commit(
        &mut self,
        cache: &Cache,
        manifests: &HashSet<Digest>,
    ) -> Result<(usize, u64), String> {
        let (mut objects, mut bytes) = (0, 0);
        for (d, spool) in self.pending.drain() {
            let kind = if manifests.contains(&d) {
                Kind::Manifest
            } else {
                Kind::Blob
            };
            if cache.store.contains(kind, &d) {
                continue;
            }
            let size = spool.len();
            cache
                .store
                .adopt(kind, spool)
                .map_err(|e| format!("cannot store {d}: {e}"))?;
            cache.quota.added(kind, d, size);
            objects += 1;
            bytes += size;
        }
        Ok((objects, bytes))
    }
}

/// Record the tags the index names (full names, or containerd's), for manifests now stored.
fn record_tags(cache: &Cache, top: &[Value]) -> Result<Vec<String>, String> {
    let mut tags = Vec::new();
    let key = Accept::default().key();
    for m in top {
        let name = m["annotations"][FULL_NAME]
            .as_str()
            .or(m["annotations"][REF_NAME].as_str());
        let (Some(name), Some(digest)) = (
            name,
            m["digest"].as_str().and_then(|d| Digest::parse(d).ok()),
        ) else {
            continue;
        };
        let Ok(image) = ImageRef::parse(name) else {
            continue;
        };
        let (Reference::Tag(tag), false) = (&image.reference, !name.contains('/')) else {
            continue;
        };
        if !cache.store.contains(Kind::Manifest, &digest) {
            continue;
        }
        let media_type = m["mediaType"].as_str().unwrap_or(media::OCI_MANIFEST);
        cache
            .tags
            .put(
                &image.registry,
                &image.name,
                tag,
                &key,
                TagEntry::new(&digest, media_type),
                Share::Yes,
            )
            .map_err(|e| format!("cannot record {image}: {e}"))?;
        tags.push(image.to_string());
    }
    Ok(tags)
}

/// What the repositories hold, as exported: links for the objects now stored.
fn record_links(cache: &Cache, links: Option<&[u8]>) -> Result<(), String> {
    let held: HashMap<String, Vec<Digest>> = links
        .and_then(|l| serde_json::from_slice(l).ok())
        .unwrap_or_default();
    for (name, digests) in held {
        let Some((registry, repo)) = name
            .split_once('/')
            .filter(|(r, _)| crate::registry::reference::is_registry_host(r))
        else {
            continue;
        };
        let Ok(repo) = crate::registry::RepoName::parse(repo) else {
            continue;
        };
        let store = &cache.store;
        let here: Vec<Digest> = digests
            .into_iter()
            .filter(|d| store.contains(Kind::Blob, d) || store.contains(Kind::Manifest, d))
            .collect();
        cache
            .links
            .add(registry, &repo, &here)
            .map_err(|e| format!("cannot record what {name} holds: {e}"))?;
    }
    Ok(())
}
