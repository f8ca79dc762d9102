//! A cluster of wharfs: one upstream fetch per blob (and one revalidation per tag) for all of
//! them.
//!
//! Every digest, and every `registry/repository:tag`, has one owner among the live members,
//! chosen by rendezvous hashing (the member whose hash of itself with the key is highest), so
//! members joining or leaving move only their own share of keys. A member asked for something
//! it does not hold asks the owner, on the owner's internal listener, instead of the upstream:
//! the owner fetches it once (coalescing every member's requests as it coalesces its own
//! clients'), streaming it on as it arrives with the last byte held back until verified; the
//! member streams it to its clients the same way and checks the digest again. Where the owner
//! cannot be reached, or cannot reach the upstream, the member asks the upstream itself:
//! availability beats the single-fetch rule.
//!
//! [`ClusterRemote`] is that rule as a [`Remote`]: the pull policy does not know it is in a
//! cluster. [`Members`] keeps who the members are (a static list, or a DNS name resolved
//! again and again), which of them answer, and which one is this instance.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::{BoxFuture, FutureExt};

use crate::metrics::METRICS;
use crate::registry::{Digest, RegistryError, RepoName};
use crate::upstream::{
    BlobBody, Head, Listing, ManifestBody, PeerClients, Referrers, RegistryClient, Remote,
};

/// Where the members are.
pub enum Roster {
    /// `host:port` of each member's internal listener (this instance's among them).
    Static(Vec<String>),
    /// A name whose addresses are the members (a Kubernetes headless Service), and the port
    /// of their internal listeners.
    Dns(String, u16),
}

/// One member, as last seen.
#[derive(Clone, Debug)]
pub struct Member {
    pub addr: String,
    /// Health checks it failed in a row ([`DOWN_AFTER`] for one never seen to answer).
    pub misses: u32,
    /// It is this instance.
    pub me: bool,
    /// Why it is not live, if it is not.
    pub problem: Option<String>,
}

impl Member {
    /// Whether keys may be its: it is this instance, or answered one of the last
    /// [`DOWN_AFTER`] health checks.
    pub fn live(&self) -> bool {
        self.me || self.misses < DOWN_AFTER
    }
}

/// Health checks a member must fail in a row to be passed over: one slow answer on a busy
/// machine must not move its keys (which would fetch them again). A member that is really
/// gone is passed over sooner by those who ask it: a refused connection sends them to the
/// upstream at once.
pub const DOWN_AFTER: u32 = 3;

/// How long a member may take to answer a health check.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The members of the cluster and their health.
pub struct Members {
    /// This instance's id, which its internal listener tells whoever asks: how a member
    /// recognises itself in a list of addresses.
    pub id: String,
    /// The cluster's shared secret, which every request between members carries.
    pub secret: String,
    roster: Roster,
    peers: PeerClients,
    interval: Duration,
    seen: RwLock<Vec<Member>>,
    /// Peer remotes by (member address, registry), made as they are needed.
    remotes: RwLock<HashMap<(String, String), Arc<RegistryClient>>>,
}

/// The key whose owner revalidates a tag.
pub fn tag_key(registry: &str, repo: &RepoName, tag: &str) -> String {
    format!("{registry}/{repo}:{tag}")
}

/// Who owns a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    Me,
    Peer(String),
}

impl Members {
    /// The members in `roster`, reached through `peers` (which carry `secret`), looked at
    /// every `interval`.
    pub fn new(roster: Roster, peers: PeerClients, secret: String, interval: Duration) -> Members {
        Members {
            id: format!("{:016x}", rand::random::<u64>()),
            secret,
            roster,
            peers,
            interval,
            seen: RwLock::default(),
            remotes: RwLock::default(),
        }
    }

    /// The owner of `key` among the live members (this instance is always live to itself).
    /// Until this instance has found itself among the members, it owns everything: a member
    /// that cannot tell itself from the others could otherwise ask one that asks it back.
    pub fn owner(&self, key: &str) -> Owner {
        let seen = self.seen.read().expect("members");
        if !seen.iter().any(|m| m.me) {
            return Owner::Me;
        }
        let live = seen.iter().filter(|m| m.live()).map(|m| m.addr.as_str());
        match rendezvous(live, key) {
            Some(addr) if !seen.iter().any(|m| m.me && m.addr == addr) => {
                Owner::Peer(addr.to_owned())
            }
            _ => Owner::Me,
        }
    }

    /// The members as last seen, for the status page.
    pub fn seen(&self) -> Vec<Member> {
        self.seen.read().expect("members").clone()
    }

    /// The remote that is the member at `addr`, for `registry`.
    fn remote(&self, addr: &str, registry: &str) -> Arc<RegistryClient> {
        let key = (addr.to_owned(), registry.to_owned());
        if let Some(r) = self.remotes.read().expect("peer remotes").get(&key) {
            return r.clone();
        }
        let r = Arc::new(self.peers.remote(registry, addr));
        self.remotes
            .write()
            .expect("peer remotes")
            .insert(key, r.clone());
        r
    }

    /// Look at every member once: who is there, who answers, who is this instance.
    pub async fn check(&self) {
        let addrs = match self.addresses().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("cannot tell the cluster's members: {e}");
                return;
            }
        };
        let pings = addrs.iter().map(|a| self.peers.ping(a, PING_TIMEOUT));
        let answers = futures_util::future::join_all(pings).await;
        let before = self.seen();
        let now: Vec<Member> = addrs
            .into_iter()
            .zip(answers)
            .map(|(addr, answer)| {
                let was = before.iter().find(|b| b.addr == addr);
                next_seen(was, addr, answer, &self.id)
            })
            .collect();
        for m in &now {
            let was = before.iter().find(|b| b.addr == m.addr).map(|b| b.live());
            match (was, m.live()) {
                (Some(true), false) => tracing::warn!(
                    "cluster member {} is down: {}",
                    m.addr,
                    m.problem.as_deref().unwrap_or("")
                ),
                (Some(false) | None, true) if !m.me => {
                    tracing::info!("cluster member {} is up", m.addr)
                }
                _ => {}
            }
        }
        let live = now.iter().filter(|m| m.live()).count();
        METRICS.cluster_members.set(live as i64);
        *self.seen.write().expect("members") = now;
    }

    async fn addresses(&self) -> Result<Vec<String>, String> {
        match &self.roster {
            Roster::Static(list) => Ok(list.clone()),
            Roster::Dns(name, port) => {
                let found = tokio::net::lookup_host((name.as_str(), *port))
                    .await
                    .map_err(|e| format!("cannot resolve {name}: {e}"))?;
                let mut addrs: Vec<String> = found.map(|a| a.to_string()).collect();
                addrs.sort();
                addrs.dedup();
                Ok(addrs)
            }
        }
    }

    /// Check the members every interval, on a thread of their own, for as long as the
    /// process runs.
    pub fn watch(self: &Arc<Self>) -> std::io::Result<()> {
        let me = self.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("wharf-members".into())
            .spawn(move || {
                runtime.block_on(async {
                    let mut tick = tokio::time::interval(me.interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let started = Instant::now();
                        me.check().await;
                        tracing::trace!("members checked in {:?}", started.elapsed());
                    }
                })
            })?;
        Ok(())
    }
}

/// The owner of `key` among `members` (`host:port` of their internal listeners).
pub fn rendezvous<'a>(members: impl Iterator<Item = &'a str>, key: &str) -> Option<&'a str> {
    members.max_by_key(|m| score(m, key))
}

/// What a member is after a health check that `answer`ed (its id, or why not), given what it
/// was (`was`) and this instance's `id`.
fn next_seen(
    was: Option<&Member>,
    addr: String,
    answer: Result<String, String>,
    id: &str,
) -> Member {
    match answer {
        Ok(theirs) => Member {
            me: theirs == id,
            misses: 0,
            problem: None,
            addr,
        },
        Err(e) => {
            // this instance is alive, however slowly it answers itself
            let me = was.is_some_and(|b| b.me);
            let misses = was.map_or(DOWN_AFTER, |b| b.misses.saturating_add(1));
            Member {
                me,
                misses,
                problem: Some(e),
                addr,
            }
        }
    }
}

/// A member's rendezvous score for a key: the first 8 bytes of SHA-256 over both.
fn score(member: &str, key: &str) -> u64 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(member.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
}

/// The remote of one registry in a cluster: what a key's owner is asked, unless this instance
/// is the owner (or the owner fails), when the upstream is.
pub struct ClusterRemote {
    registry: String,
    members: Arc<Members>,
    upstream: Arc<dyn Remote>,
}

impl ClusterRemote {
    pub fn new(registry: &str, members: Arc<Members>, upstream: Arc<dyn Remote>) -> Self {
        ClusterRemote {
            registry: registry.to_owned(),
            members,
            upstream,
        }
    }

    /// Ask `key`'s owner with `call`, or the upstream if this instance owns it or the owner
    /// fails; the answer, and whether the owner gave it.
    async fn ask<'a, T>(
        &self,
        key: &str,
        call: impl Fn(Arc<dyn Remote>) -> BoxFuture<'a, Result<T, RegistryError>>,
    ) -> Result<(T, bool), RegistryError> {
        if let Owner::Peer(addr) = self.members.owner(key) {
            METRICS.peer_forwarded.inc();
            match call(self.members.remote(&addr, &self.registry)).await {
                Err(e) if self.falls_back(&addr, &e) => {}
                answer => return answer.map(|v| (v, true)),
            }
        }
        call(self.upstream.clone()).await.map(|v| (v, false))
    }

    /// The key of a manifest reference: a digest, or the tag in its repository.
    fn manifest_key(&self, repo: &RepoName, reference: &str) -> String {
        match Digest::parse(reference) {
            Ok(d) => d.to_string(),
            Err(_) => tag_key(&self.registry, repo, reference),
        }
    }

    /// Whether what the peer answered sends this instance to the upstream instead: anything
    /// but a 404, which the owner had from the upstream.
    fn falls_back(&self, addr: &str, e: &RegistryError) -> bool {
        // a 404 is the upstream's word, passed on by the owner; anything else (the owner is
        // down, slow, refused this member's secret, or lacks the registry) is the owner's
        if e.cause == crate::registry::Cause::NotFound {
            return false;
        }
        METRICS.peer_fallbacks.inc();
        tracing::warn!("cluster member {addr} failed ({e}); asking the upstream instead");
        true
    }
}

#[async_trait]
impl Remote for ClusterRemote {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<ManifestBody, RegistryError> {
        let key = self.manifest_key(repo, reference);
        let (mut body, from_owner) = self
            .ask(&key, |r| {
                async move { r.manifest(repo, reference, accept).await }.boxed()
            })
            .await?;
        body.shared_by_source = from_owner;
        Ok(body)
    }

    async fn manifest_head(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<Head, RegistryError> {
        let key = self.manifest_key(repo, reference);
        let (mut head, from_owner) = self
            .ask(&key, |r| {
                async move { r.manifest_head(repo, reference, accept).await }.boxed()
            })
            .await?;
        head.shared_by_source = from_owner;
        Ok(head)
    }

    async fn blob_head(&self, repo: &RepoName, digest: &Digest) -> Result<Head, RegistryError> {
        Ok(self
            .ask(&digest.to_string(), |r| {
                async move { r.blob_head(repo, digest).await }.boxed()
            })
            .await?
            .0)
    }

    /// What an owner sends, the owner puts in the shared store itself.
    async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobBody, RegistryError> {
        let (mut body, from_owner) = self
            .ask(&digest.to_string(), |r| {
                async move { r.blob(repo, digest).await }.boxed()
            })
            .await?;
        body.shared_by_source = from_owner;
        Ok(body)
    }

    /// Tag lists and referrers are not cached for long: the upstream answers them.
    async fn tags(&self, repo: &RepoName, query: &str) -> Result<Listing, RegistryError> {
        self.upstream.tags(repo, query).await
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, RegistryError> {
        self.upstream.referrers(repo, digest, artifact_type).await
    }

    fn read_timeout(&self) -> Duration {
        self.upstream.read_timeout()
    }

    fn has_credentials(&self) -> bool {
        self.upstream.has_credentials()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(addrs: &[&str], me: &str) -> Members {
        let peers = PeerClients::new(
            "s",
            None,
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap();
        let m = Members::new(
            Roster::Static(vec![]),
            peers,
            "s".into(),
            Duration::from_secs(1),
        );
        *m.seen.write().unwrap() = addrs
            .iter()
            .map(|a| Member {
                addr: a.to_string(),
                misses: 0,
                me: *a == me,
                problem: None,
            })
            .collect();
        m
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_keys() {
        let all = members(&["a:1", "b:1", "c:1"], "a:1");
        let keys: Vec<String> = (0..3000).map(|i| format!("sha256:{i:064x}")).collect();
        let owners = |m: &Members| -> Vec<String> {
            keys.iter()
                .map(|k| match m.owner(k) {
                    Owner::Me => "a:1".to_owned(),
                    Owner::Peer(p) => p,
                })
                .collect()
        };
        let before = owners(&all);
        for who in ["a:1", "b:1", "c:1"] {
            let n = before.iter().filter(|o| *o == who).count();
            assert!((800..1200).contains(&n), "{who} owns {n} of 3000");
        }
        all.seen.write().unwrap()[2].misses = DOWN_AFTER; // c:1 goes
        let after = owners(&all);
        for (b, a) in before.iter().zip(&after) {
            if b != "c:1" {
                assert_eq!(a, b, "only c's keys move");
            } else {
                assert_ne!(a, "c:1");
            }
        }
    }

    #[test]
    fn a_member_is_passed_over_after_three_missed_checks_and_this_one_never() {
        let a = || "a:1".to_owned();
        let up = next_seen(None, a(), Ok("them".into()), "me");
        assert!(up.live() && !up.me);
        let slow = next_seen(Some(&up), a(), Err("slow".into()), "me");
        let slower = next_seen(Some(&slow), a(), Err("slow".into()), "me");
        assert!(
            slow.live() && slower.live(),
            "one or two slow answers move nothing"
        );
        let gone = next_seen(Some(&slower), a(), Err("slow".into()), "me");
        assert!(!gone.live());
        assert!(next_seen(Some(&gone), a(), Ok("them".into()), "me").live());
        assert!(
            !next_seen(None, a(), Err("refused".into()), "me").live(),
            "never seen: not live"
        );
        let me = next_seen(None, a(), Ok("me".into()), "me");
        let mut m = me;
        for _ in 0..5 {
            m = next_seen(Some(&m), a(), Err("busy".into()), "me");
        }
        assert!(m.live() && m.me, "this instance is never passed over");
    }

    #[test]
    fn alone_or_unknown_this_instance_owns_everything() {
        let m = members(&[], "");
        assert!(matches!(m.owner("sha256:00"), Owner::Me));
        let m = members(&["a:1"], "a:1");
        assert!(matches!(m.owner("sha256:00"), Owner::Me));
    }
}
