//! Who is asking, and what they may read. Off by default: then every client is anonymous and
//! may read everything wharf's upstream credentials unlock (serve says so at start when some
//! upstream has credentials). With `[access]` configured, a client says who it is by HTTP Basic
//! (checked against an htpasswd file of bcrypt hashes) or by a TLS client certificate (its
//! subject's common name, as `cert:<CN>`), and rules say which identities may read which
//! `registry/repository` patterns. A client that may not read gets `401` with a Basic
//! challenge when it gave no credentials (or wrong ones), `403 DENIED` when it did; nothing is
//! fetched for it.
//!
//! bcrypt is slow on purpose (tens of milliseconds): a verified pair of credentials is kept
//! (hashed) for a few minutes, wrong ones too, until the htpasswd file changes (looked at once
//! a second at most); at most two verifications run at once, on the blocking pool, with a
//! bounded queue before them, so that guessing passwords cannot take the server's threads nor
//! hold requests without end. An unknown user costs a verification too (against a stand-in
//! hash of the same cost), so answers take as long whether the user exists or not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::mirror::freshness::glob;
use crate::registry::{Cause, ErrorCode, RegistryError};

/// `[access]` in the configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// An htpasswd file of bcrypt entries (`htpasswd -B`), re-read when it changes.
    #[serde(default)]
    pub htpasswd: Option<PathBuf>,
    /// Who may read what, checked in order; none given: every authenticated client reads
    /// everything, anonymous ones nothing.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Identities (`anonymous`, `*` for any authenticated one, a user name, `cert:<CN>`) that may
/// read repositories matching any of the patterns (`registry/repository`, `*` matches any run
/// of characters).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub who: Vec<String>,
    pub repositories: Vec<String>,
}

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    /// A user of the htpasswd file.
    User(String),
    /// A TLS client certificate, by its subject's common name.
    Cert(String),
}

impl Identity {
    pub fn name(&self) -> String {
        match self {
            Identity::Anonymous => "anonymous".into(),
            Identity::User(u) => u.clone(),
            Identity::Cert(cn) => format!("cert:{cn}"),
        }
    }

    fn matches(&self, who: &str) -> bool {
        match (self, who) {
            (Identity::Anonymous, w) => w == "anonymous",
            (_, "*") => true,
            (id, w) => id.name() == w,
        }
    }
}

pub struct Access {
    /// Whether clients must say who they are at all (anything configured).
    on: bool,
    htpasswd: Option<Arc<Htpasswd>>,
    rules: Vec<Rule>,
    /// sha256(user:password) of credentials checked lately: whether they were right, as of
    /// which generation of the htpasswd file.
    checked: moka::sync::Cache<[u8; 32], (bool, u64)>,
    verifying: tokio::sync::Semaphore,
    /// Requests waiting for a verification slot, or in one.
    queued: AtomicUsize,
}

/// How long a checked pair of credentials is believed, right or wrong (unless the htpasswd
/// file changes meanwhile).
const CHECKED_FOR: Duration = Duration::from_secs(300);
/// Most requests waiting to have a password verified; past it, a 503 to retry.
const MAX_QUEUED: usize = 64;
/// Longest a request waits for its password to be verified.
const VERIFY_WITHIN: Duration = Duration::from_secs(10);

impl Access {
    /// `certificates`: whether TLS client certificates are checked (a `client_ca`), which
    /// tells clients apart even without an `[access]` table.
    pub fn new(config: Option<&AccessConfig>, certificates: bool) -> Result<Access, String> {
        let htpasswd = match config.and_then(|c| c.htpasswd.as_deref()) {
            Some(p) => Some(Arc::new(Htpasswd::load(p)?)),
            None => None,
        };
        let mut rules = config.map(|c| c.rules.clone()).unwrap_or_default();
        if rules.is_empty() {
            rules.push(Rule {
                who: vec!["*".into()],
                repositories: vec!["*".into()],
            });
        }
        Ok(Access {
            on: config.is_some() || certificates,
            htpasswd,
            rules,
            checked: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(CHECKED_FOR)
                .build(),
            verifying: tokio::sync::Semaphore::new(2),
            queued: AtomicUsize::new(0),
        })
    }

    /// Whether clients are told apart at all.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Who sent a request with this `Authorization` header (and TLS client certificate CN).
    /// Wrong or unreadable credentials are a 401.
    pub async fn identify(
        &self,
        authorization: Option<&[u8]>,
        cert: Option<&str>,
    ) -> Result<Identity, RegistryError> {
        if !self.on {
            return Ok(Identity::Anonymous);
        }
        if let Some(a) = authorization {
            return self.basic(a).await.map(Identity::User);
        }
        Ok(match cert {
            Some(cn) => Identity::Cert(cn.to_owned()),
            None => Identity::Anonymous,
        })
    }

    async fn basic(&self, header: &[u8]) -> Result<String, RegistryError> {
        let wrong = || challenge("wrong user name or password");
        let Some(htpasswd) = &self.htpasswd else {
            return Err(challenge("this mirror takes no passwords"));
        };
        let encoded = std::str::from_utf8(header)
            .ok()
            .and_then(|h| {
                h.strip_prefix("Basic ")
                    .or_else(|| h.strip_prefix("basic "))
            })
            .ok_or_else(|| challenge("only Basic credentials are taken here"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| wrong())?;
        let text = String::from_utf8(decoded).map_err(|_| wrong())?;
        let (user, password) = text.split_once(':').ok_or_else(wrong)?;
        let key: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if htpasswd.due() {
            let file = htpasswd.clone();
            let _ = tokio::task::spawn_blocking(move || file.refresh()).await;
        }
        let generation = htpasswd.generation();
        if let Some((right, _)) = self.checked.get(&key).filter(|(_, g)| *g == generation) {
            return if right {
                Ok(user.to_owned())
            } else {
                Err(wrong())
            };
        }
        let _queued = Queued::join(&self.queued).ok_or_else(|| {
            RegistryError::busy(
                "too many passwords are being checked at once; try again shortly",
                1,
            )
        })?;
        let _slot = tokio::time::timeout(VERIFY_WITHIN, self.verifying.acquire())
            .await
            .map_err(|_| {
                RegistryError::busy("passwords are being checked slowly; try again shortly", 1)
            })?
            .expect("never closed");
        let (file, name, password) = (htpasswd.clone(), user.to_owned(), password.to_owned());
        let right = tokio::task::spawn_blocking(move || file.verify(&name, &password))
            .await
            .unwrap_or(false);
        self.checked.insert(key, (right, generation));
        if right {
            Ok(user.to_owned())
        } else {
            Err(wrong())
        }
    }

    /// Whether `who` may read `subject`, a `registry/repository` (`None`: the base endpoint,
    /// which anyone who may read anything may reach).
    pub fn may_read(&self, who: &Identity, subject: Option<&str>) -> bool {
        if !self.on {
            return true;
        }
        self.rules.iter().any(|rule| {
            rule.who.iter().any(|w| who.matches(w))
                && match subject {
                    Some(s) => rule.repositories.iter().any(|p| glob(p, s)),
                    None => true,
                }
        })
    }

    /// The error for a request `who` may not make: a challenge to an anonymous client, a
    /// refusal to anyone else.
    pub fn refusal(&self, who: &Identity, what: &str) -> RegistryError {
        match who {
            Identity::Anonymous => challenge(&format!("{what} needs credentials")),
            id => RegistryError::denied(format!("{} may not read {what}", id.name())),
        }
    }
}

/// A place in the queue for a verification, given back when dropped.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn join(queued: &'a AtomicUsize) -> Option<Queued<'a>> {
        if queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            queued.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Queued(queued))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A 401 that asks for Basic credentials.
fn challenge(why: &str) -> RegistryError {
    let mut e = RegistryError::new(Cause::Unauthenticated, ErrorCode::Unauthorized, why);
    e.challenge = Some(CHALLENGE.into());
    e
}

/// What wharf asks a client without valid credentials for.
pub const CHALLENGE: &str = "Basic realm=\"wharf\"";

/// User names and their bcrypt hashes, as read at a file's modification time.
type Entries = (Option<SystemTime>, Arc<HashMap<String, String>>);

/// An htpasswd file of bcrypt entries, re-read when its modification time changes (looked
/// at once a second at most). Each reading is a generation: what was checked against an
/// older one is checked again.
struct Htpasswd {
    path: PathBuf,
    entries: Mutex<Entries>,
    generation: AtomicU64,
    /// When the file was last looked at.
    looked: Mutex<Instant>,
    /// A hash of no password, of the cost the file's use: what an unknown user is checked
    /// against, so that an answer does not tell whether the user exists.
    stand_in: String,
}

/// How often the htpasswd file is looked at for changes, at most.
const LOOK_EVERY: Duration = Duration::from_secs(1);

impl Htpasswd {
    fn load(path: &Path) -> Result<Htpasswd, String> {
        let (mtime, text) = read_htpasswd(path)?;
        let entries = parse_htpasswd(&text).map_err(|e| format!("{}:{e}", path.display()))?;
        let cost = entries
            .values()
            .filter_map(|h| h.get(4..6)?.parse::<u32>().ok())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let stand_in = bcrypt::hash(rand::random::<u64>().to_string(), cost.clamp(4, 31))
            .map_err(|e| format!("cannot make a bcrypt hash: {e}"))?;
        Ok(Htpasswd {
            path: path.to_owned(),
            entries: Mutex::new((mtime, Arc::new(entries))),
            generation: AtomicU64::new(0),
            looked: Mutex::new(Instant::now()),
            stand_in,
        })
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the file is due for a look.
    fn due(&self) -> bool {
        self.looked.lock().expect("htpasswd").elapsed() >= LOOK_EVERY
    }

    /// Read the file again if it changed. Blocking (a stat, and a read when it changed). A
    /// line that cannot be read is left out, with a warning (the others stand: a typo must
    /// not keep a user the file no longer has); a file that cannot be read at all keeps the
    /// entries read before.
    fn refresh(&self) {
        *self.looked.lock().expect("htpasswd") = Instant::now();
        let now = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut e = self.entries.lock().expect("htpasswd");
        if now.is_none() || now == e.0 {
            return;
        }
        match read_htpasswd(&self.path) {
            Ok((mtime, text)) => {
                let (entries, bad) = htpasswd_entries(&text);
                for why in bad {
                    tracing::warn!("{}:{why}: line left out", self.path.display());
                }
                *e = (mtime, Arc::new(entries));
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            Err(why) => tracing::error!("keeping the htpasswd entries read before: {why}"),
        }
    }

    /// Whether `password` is `user`'s, by the file as it is now (a user just added is known at
    /// once). Blocking (a stat, and bcrypt: tens of milliseconds).
    fn verify(&self, user: &str, password: &str) -> bool {
        self.refresh();
        let hash = self.entries.lock().expect("htpasswd").1.get(user).cloned();
        match hash {
            Some(h) => bcrypt::verify(password, &h).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, &self.stand_in);
                false
            }
        }
    }
}

fn read_htpasswd(path: &Path) -> Result<(Option<SystemTime>, String), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the htpasswd file {}: {e}", path.display()))?;
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((mtime, text))
}

/// The user names and bcrypt hashes of an htpasswd file's text: `user:hash` lines, blank lines
/// and `#` comments. A line that is neither, or a hash that is not bcrypt, is an error that
/// starts with its line number (`3: …`).
pub fn parse_htpasswd(text: &str) -> Result<HashMap<String, String>, String> {
    match htpasswd_entries(text) {
        (entries, bad) if bad.is_empty() => Ok(entries),
        (_, mut bad) => Err(bad.swap_remove(0)),
    }
}

/// The entries of the lines that can be read, and why the others cannot.
fn htpasswd_entries(text: &str) -> (HashMap<String, String>, Vec<String>) {
    let mut entries = HashMap::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            bad.push(format!("{}: not user:hash", n + 1));
            continue;
        };
        if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
            bad.push(format!(
                "{}: the hash of {user:?} is not bcrypt (make it with htpasswd -B)",
                n + 1
            ));
            continue;
        }
        entries.insert(user.to_owned(), hash.to_owned());
    }
    (entries, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(rules: &str, htpasswd: Option<&Path>) -> Access {
        let mut text = String::from("[access]\n");
        if let Some(p) = htpasswd {
            text.push_str(&format!("htpasswd = {:?}\n", p.display().to_string()));
        }
        text.push_str(rules);
        #[derive(Deserialize)]
        struct T {
            access: AccessConfig,
        }
        let t: T = toml::from_str(&text).unwrap();
        Access::new(Some(&t.access), false).unwrap()
    }

    #[test]
    fn rules_say_who_reads_what() {
        let a = access(
            r#"
            [[access.rules]]
            who = ["anonymous"]
            repositories = ["docker.io/library/*"]
            [[access.rules]]
            who = ["alice", "cert:builder"]
            repositories = ["docker.io/private/*", "ghcr.io/*"]
            [[access.rules]]
            who = ["*"]
            repositories = ["quay.io/*"]
            "#,
            None,
        );
        let (anon, alice, bob, builder) = (
            Identity::Anonymous,
            Identity::User("alice".into()),
            Identity::User("bob".into()),
            Identity::Cert("builder".into()),
        );
        assert!(a.may_read(&anon, Some("docker.io/library/busybox")));
        assert!(!a.may_read(&anon, Some("docker.io/private/app")));
        assert!(!a.may_read(&anon, Some("quay.io/x")), "* is no anonymous");
        assert!(a.may_read(&anon, None), "anonymous may read something");
        assert!(a.may_read(&alice, Some("docker.io/private/app")));
        assert!(a.may_read(&builder, Some("ghcr.io/org/tool")));
        assert!(!a.may_read(&bob, Some("docker.io/private/app")));
        assert!(a.may_read(&bob, Some("quay.io/x")));
        assert!(!a.may_read(&bob, Some("docker.io/library/busybox")));
        assert_eq!(
            a.refusal(&anon, "x").status(),
            http::StatusCode::UNAUTHORIZED
        );
        assert_eq!(a.refusal(&bob, "x").status(), http::StatusCode::FORBIDDEN);
        // off: everyone reads everything
        let off = Access::new(None, false).unwrap();
        assert!(off.may_read(&anon, Some("docker.io/private/app")));
        // on, without rules: the authenticated read everything, the anonymous nothing
        let default = access("", None);
        assert!(default.may_read(&bob, Some("docker.io/private/app")));
        assert!(!default.may_read(&anon, None));
    }

    #[tokio::test]
    async fn passwords_are_checked_against_bcrypt_and_the_file_is_reread() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&file, format!("alice:{hash}\n")).unwrap();
        let a = access("", Some(&file));
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        let who = a
            .identify(Some(basic("alice", "s3cret").as_bytes()), None)
            .await;
        assert_eq!(who.unwrap(), Identity::User("alice".into()));
        for wrong in [
            basic("alice", "guess"),
            basic("mallory", "s3cret"),
            "Bearer x".into(),
        ] {
            let e = a.identify(Some(wrong.as_bytes()), None).await.unwrap_err();
            assert_eq!(e.status(), http::StatusCode::UNAUTHORIZED, "{wrong}");
            assert_eq!(e.challenge.as_deref(), Some(CHALLENGE));
        }
        assert_eq!(a.identify(None, None).await.unwrap(), Identity::Anonymous);
        assert_eq!(
            a.identify(None, Some("builder")).await.unwrap(),
            Identity::Cert("builder".into())
        );
        // a user added to the file is known at once (a new pair of credentials is checked)
        std::thread::sleep(Duration::from_millis(20));
        let bob = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(&file, format!("alice:{hash}\nbob:{bob}\n")).unwrap();
        let t = std::time::SystemTime::now() + Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(t)
            .unwrap();
        let who = a.identify(Some(basic("bob", "pw").as_bytes()), None).await;
        assert_eq!(who.unwrap(), Identity::User("bob".into()));
    }

    #[test]
    fn only_bcrypt_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, "alice:$apr1$abc$def\n").unwrap();
        let e = Htpasswd::load(&file).err().unwrap();
        assert!(e.contains("not bcrypt"), "{e}");
    }
}
