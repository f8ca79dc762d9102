//! The pull policy case by case, against an in-memory remote: what is asked upstream, and
//! what is answered, for fresh, expired, moved, missing, lying and unreachable upstreams.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Body, Mirror, Outcome, Reply};
use crate::config::Config;
use crate::registry::media::Accept;
use crate::registry::{Cause, Digest, Reference, RepoName, Route, Tag};
use crate::upstream::fake::FakeRemote;
use crate::upstream::Upstream;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Case {
    mirror: Arc<Mirror>,
    up: Arc<Upstream>,
    remote: Arc<FakeRemote>,
    _dir: tempfile::TempDir,
}

/// A mirror of docker.io through a fake remote, with `config` (TOML) besides a data dir.
fn case(config: &str) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("data_dir = {:?}\n{config}", dir.path().join("data"));
    let config = Config::parse(&text).unwrap();
    let remote = Arc::new(FakeRemote::default());
    let up = Arc::new(Upstream::with_remote(
        "docker.io".into(),
        None,
        config.offline,
        remote.clone(),
    ));
    let upstreams = HashMap::from([("docker.io".to_owned(), up.clone())]);
    Case {
        mirror: Arc::new(Mirror::open_with(&config, upstreams).unwrap()),
        up,
        remote,
        _dir: dir,
    }
}

/// An image manifest whose config is `n` (so that different `n` make different digests).
fn manifest(n: u8) -> Vec<u8> {
    let config = Digest::of(&[n]);
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[]}}"#
    )
    .into_bytes()
}

impl Case {
    async fn get(&self, name: &str, reference: &str) -> Reply {
        let route = Route::Manifest {
            name: RepoName::parse(name).unwrap(),
            reference: match reference.strip_prefix("sha256:") {
                Some(_) => Reference::Digest(Digest::parse(reference).unwrap()),
                None => Reference::Tag(Tag::parse(reference).unwrap()),
            },
        };
        let accept = Accept::parse([OCI_MANIFEST]);
        self.mirror
            .handle(&self.up, route, false, &accept, None)
            .await
    }

    /// What the remote was asked since the last call.
    fn asked(&self, since: &mut usize) -> Vec<String> {
        let all = self.remote.asked();
        let new = all[*since..].to_vec();
        *since = all.len();
        new
    }
}

fn body(r: &Reply) -> &[u8] {
    match &r.body {
        Body::Bytes(b) => b,
        _ => panic!("a manifest reply carries its bytes"),
    }
}

#[tokio::test]
async fn a_fresh_tag_is_answered_without_asking() {
    let c = case("");
    let bytes = manifest(1);
    c.remote
        .put_manifest("library/app", "1", &bytes, OCI_MANIFEST);
    let mut seen = 0;
    let r = c.get("library/app", "1").await;
    assert_eq!((r.status.as_u16(), r.outcome), (200, Outcome::Miss));
    assert_eq!(body(&r), &bytes[..]);
    assert_eq!(c.asked(&mut seen), ["GET manifest library/app:1"]);
    let r = c.get("library/app", "1").await;
    assert_eq!(r.outcome, Outcome::HitMemory);
    assert!(c.asked(&mut seen).is_empty());
}

#[tokio::test]
async fn an_expired_tag_that_still_holds_costs_one_head() {
    let c = case("tag_ttl = \"0s\"\n");
    let bytes = manifest(2);
    c.remote
        .put_manifest("library/app", "1", &bytes, OCI_MANIFEST);
    let mut seen = 0;
    assert_eq!(c.get("library/app", "1").await.outcome, Outcome::Miss);
    c.asked(&mut seen);
    let r = c.get("library/app", "1").await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(matches!(r.outcome, Outcome::HitMemory | Outcome::HitDisk));
    assert_eq!(body(&r), &bytes[..]);
    assert_eq!(c.asked(&mut seen), ["HEAD manifest library/app:1"]);
}

#[tokio::test]
async fn an_expired_tag_that_moved_is_fetched_again() {
    let c = case("tag_ttl = \"0s\"\n");
    let (old, new) = (manifest(3), manifest(4));
    c.remote
        .put_manifest("library/app", "1", &old, OCI_MANIFEST);
    assert_eq!(c.get("library/app", "1").await.outcome, Outcome::Miss);
    c.remote
        .put_manifest("library/app", "1", &new, OCI_MANIFEST);
    let mut seen = c.remote.asked().len();
    let r = c.get("library/app", "1").await;
    assert_eq!((r.outcome, body(&r)), (Outcome::Miss, &new[..]));
    assert_eq!(
        c.asked(&mut seen),
        ["HEAD manifest library/app:1", "GET manifest library/app:1"]
    );
}

#[tokio::test]
async fn an_expired_tag_is_served_stale_while_the_upstream_is_down() {
    let c = case("tag_ttl = \"0s\"\n");
    let bytes = manifest(5);
    c.remote
        .put_manifest("library/app", "1", &bytes, OCI_MANIFEST);
    assert_eq!(c.get("library/app", "1").await.outcome, Outcome::Miss);
    c.remote.set_down(true);
    let r = c.get("library/app", "1").await;
    assert_eq!((r.status.as_u16(), r.outcome), (200, Outcome::Stale));
    assert_eq!(body(&r), &bytes[..]);
    // a tag never seen has nothing to stand in: the upstream's failure is the answer
    let r = c.get("library/app", "2").await;
    assert_eq!((r.status.as_u16(), r.outcome), (502, Outcome::Local));
    // and within 10 s of a failure an expired tag is not even asked about
    let before = c.remote.asked().len();
    assert_eq!(c.get("library/app", "1").await.outcome, Outcome::Stale);
    assert_eq!(c.remote.asked().len(), before);
}

#[tokio::test]
async fn a_missing_tag_is_believed_for_negative_ttl() {
    let c = case("negative_ttl = \"1h\"\n");
    let mut seen = 0;
    assert_eq!(c.get("library/app", "nope").await.status.as_u16(), 404);
    assert_eq!(c.get("library/app", "nope").await.status.as_u16(), 404);
    assert_eq!(c.asked(&mut seen), ["GET manifest library/app:nope"]);
}

#[tokio::test]
async fn a_manifest_that_is_not_what_its_digest_says_is_refused_and_not_kept() {
    let c = case("");
    let (good, other) = (manifest(6), manifest(7));
    let d = Digest::of(&good);
    c.remote
        .put_at("library/app", &d.to_string(), &other, OCI_MANIFEST);
    let r = c.get("library/app", &d.to_string()).await;
    assert_eq!(r.status.as_u16(), 502);
    assert!(!c
        .mirror
        .cache
        .store
        .contains(crate::cache::Kind::Manifest, &d));
    let other = Digest::of(&other);
    assert!(!c
        .mirror
        .cache
        .store
        .contains(crate::cache::Kind::Manifest, &other));
}

#[tokio::test]
async fn offline_answers_from_the_cache_and_asks_nobody() {
    let c = case("offline = true\n");
    let r = c.get("library/app", "1").await;
    assert_eq!(r.status.as_u16(), 404);
    assert!(c.remote.asked().is_empty());
}

#[tokio::test]
async fn a_local_failure_is_not_taken_for_the_upstreams() {
    let e = crate::registry::RegistryError::local("disk");
    assert_eq!(e.cause, Cause::Local);
    assert!(!super::is_unavailable(&e));
}
