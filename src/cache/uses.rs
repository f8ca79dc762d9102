//! Recency in a shared store, across a cluster, without a write per hit.
//!
//! Each instance notes in memory which objects it served ([`UseLog::note`]: a set insert) and,
//! once per interval, writes that set as one small object in the bucket, `<prefix>/uses/
//! <unix seconds>-<instance>`, a line per object. `wharf gc` reads every such record, takes an
//! object's last use as the newest record naming it (or its upload, if none does), removes the
//! least recently used objects until the bucket is under its byte quota, and folds the records
//! it read into one (`<seconds>-gc`, each line with its own time) so that they do not pile up.
//! A hit costs a set insert; the bucket sees one write per instance per interval.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::store::{BucketStore, ContentStore, Kind, Shelf, Stored};
use crate::registry::Digest;

/// Objects noted at most between two flushes (beyond: a flush is due early).
const MAX_NOTED: usize = 100_000;

pub struct UseLog {
    noted: Mutex<HashSet<(Kind, Digest)>>,
    bucket: Arc<BucketStore>,
    /// This instance, in the names of its records.
    instance: String,
}

impl UseLog {
    pub fn new(bucket: Arc<BucketStore>) -> UseLog {
        UseLog {
            noted: Mutex::default(),
            bucket,
            instance: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// An object was served (the watcher flushes early once [`MAX_NOTED`] are noted).
    pub fn note(&self, kind: Kind, digest: &Digest) {
        self.noted.lock().expect("use log").insert((kind, *digest));
    }

    /// Write what was noted since the last flush as one record. Blocking.
    pub fn flush(&self) -> io::Result<usize> {
        let noted = std::mem::take(&mut *self.noted.lock().expect("use log"));
        if noted.is_empty() {
            return Ok(0);
        }
        let mut text = String::with_capacity(noted.len() * 68);
        for (kind, d) in &noted {
            text.push_str(letter(*kind));
            text.push(' ');
            text.push_str(&d.hex());
            text.push('\n');
        }
        let name = format!("{:012}-{}", now_secs(), self.instance);
        if let Err(e) = self
            .bucket
            .put_record(Shelf::Uses, &name, text.into_bytes())
        {
            // kept for the next flush: a lost record could make gc take hot objects
            self.noted.lock().expect("use log").extend(noted);
            return Err(e);
        }
        Ok(noted.len())
    }

    /// Flush every `interval` (and early when many objects were noted), on a thread of its
    /// own, for as long as the process runs.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("wharf-uses".into())
            .spawn(move || {
                let mut last = std::time::Instant::now();
                loop {
                    std::thread::sleep(Duration::from_secs(1).min(interval));
                    let full = me.noted.lock().expect("use log").len() >= MAX_NOTED;
                    if !full && last.elapsed() < interval {
                        continue;
                    }
                    last = std::time::Instant::now();
                    if let Err(e) = me.flush() {
                        tracing::warn!("cannot record recent uses in the shared store: {e}");
                    }
                }
            })?;
        Ok(())
    }
}

fn letter(kind: Kind) -> &'static str {
    match kind {
        Kind::Manifest => "m",
        Kind::Blob => "b",
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a collection of the shared store did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub removed: usize,
    pub bytes: u64,
    /// Use records read and folded into one.
    pub records: usize,
}

/// Remove the least recently used objects of `bucket` until it holds at most `max` bytes, by
/// the use records of every instance. Blocking.
pub fn collect(bucket: &BucketStore, max: u64) -> io::Result<Collected> {
    let objects = bucket.list()?;
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut last: HashMap<(Kind, Digest), u64> = objects
        .iter()
        .map(|o| ((o.kind, o.digest), secs(o.modified)))
        .collect();
    let uploaded: HashMap<(Kind, Digest), u64> = last.clone();
    let records = bucket.records(Shelf::Uses)?;
    for name in &records {
        let when: u64 = name
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let Some(text) = bucket.read_record(Shelf::Uses, name)? else {
            continue; // collected meanwhile
        };
        for line in String::from_utf8_lossy(&text).lines() {
            let mut fields = line.split(' ');
            let kind = match fields.next() {
                Some("m") => Kind::Manifest,
                Some("b") => Kind::Blob,
                _ => continue,
            };
            let Some(Ok(d)) = fields.next().map(|h| Digest::parse(&format!("sha256:{h}"))) else {
                continue;
            };
            let at = fields.next().and_then(|s| s.parse().ok()).unwrap_or(when);
            if let Some(t) = last.get_mut(&(kind, d)) {
                *t = (*t).max(at);
            }
        }
    }
    let mut order: Vec<&Stored> = objects.iter().collect();
    order.sort_by_key(|o| last[&(o.kind, o.digest)]);
    let mut total: u64 = objects.iter().map(|o| o.size).sum();
    let mut done = Collected {
        records: records.len(),
        ..Default::default()
    };
    for o in order {
        if total <= max {
            break;
        }
        if bucket.remove(o.kind, &o.digest)? {
            done.removed += 1;
            done.bytes += o.size;
        }
        total -= o.size;
        last.remove(&(o.kind, o.digest));
    }
    // one record for what the others said of the objects kept, then the others go
    let mut folded = String::new();
    for ((kind, d), at) in &last {
        if uploaded.get(&(*kind, *d)) != Some(at) {
            folded.push_str(&format!("{} {} {at}\n", letter(*kind), d.hex()));
        }
    }
    if !folded.is_empty() {
        bucket.put_record(
            Shelf::Uses,
            &format!("{:012}-gc", now_secs()),
            folded.into_bytes(),
        )?;
    }
    for name in &records {
        bucket.remove_record(Shelf::Uses, name)?;
    }
    Ok(done)
}
