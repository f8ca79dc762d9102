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
//! (hashed) for a few minutes, wrong ones too, and at most two verifications run at once, on
//! the blocking pool, so that guessing passwords cannot take the server's threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use http::StatusCode;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::mirror::freshness::glob;
use crate::registry::{ErrorCode, RegistryError};

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
    /// sha256(user:password) of credentials checked lately: whether they were right.
    checked: moka::sync::Cache<[u8; 32], bool>,
    verifying: tokio::sync::Semaphore,
}

/// How long a checked pair of credentials is believed, right or wrong.
const CHECKED_FOR: Duration = Duration::from_secs(300);

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
        if let Some(right) = self.checked.get(&key) {
            return if right {
                Ok(user.to_owned())
            } else {
                Err(wrong())
            };
        }
        let _slot = self.verifying.acquire().await.expect("never closed");
        let (file, name, password) = (htpasswd.clone(), user.to_owned(), password.to_owned());
        let right = tokio::task::spawn_blocking(move || match file.hash_of(&name) {
            Some(hash) => bcrypt::verify(password, &hash).unwrap_or(false),
            None => false,
        })
        .await
        .unwrap_or(false);
        self.checked.insert(key, right);
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
            id => RegistryError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Denied,
                format!("{} may not read {what}", id.name()),
            ),
        }
    }
}

/// A 401 that asks for Basic credentials.
fn challenge(why: &str) -> RegistryError {
    let mut e = RegistryError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, why);
    e.challenge = Some(CHALLENGE.into());
    e
}

/// What wharf asks a client without valid credentials for.
pub const CHALLENGE: &str = "Basic realm=\"wharf\"";

/// User names and their bcrypt hashes, as read at a file's modification time.
type Entries = (Option<SystemTime>, Arc<HashMap<String, String>>);

/// An htpasswd file of bcrypt entries, re-read when its modification time changes.
struct Htpasswd {
    path: PathBuf,
    entries: Mutex<Entries>,
}

impl Htpasswd {
    fn load(path: &Path) -> Result<Htpasswd, String> {
        let (mtime, entries) = read_htpasswd(path)?;
        Ok(Htpasswd {
            path: path.to_owned(),
            entries: Mutex::new((mtime, Arc::new(entries))),
        })
    }

    /// The bcrypt hash of `user`, from the file as it is now. Blocking (a stat, and a read when
    /// the file changed); a file that became unreadable keeps its last good entries.
    fn hash_of(&self, user: &str) -> Option<String> {
        let now = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut e = self.entries.lock().expect("htpasswd");
        if now.is_some() && now != e.0 {
            match read_htpasswd(&self.path) {
                Ok((mtime, entries)) => *e = (mtime, Arc::new(entries)),
                Err(why) => tracing::warn!("keeping the htpasswd entries read before: {why}"),
            }
        }
        e.1.get(user).cloned()
    }
}

fn read_htpasswd(path: &Path) -> Result<(Option<SystemTime>, HashMap<String, String>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the htpasswd file {}: {e}", path.display()))?;
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut entries = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("{}:{}: not user:hash", path.display(), n + 1))?;
        if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
            return Err(format!(
                "{}:{}: the hash of {user:?} is not bcrypt (make it with htpasswd -B)",
                path.display(),
                n + 1
            ));
        }
        entries.insert(user.to_owned(), hash.to_owned());
    }
    Ok((mtime, entries))
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
        assert_eq!(a.refusal(&anon, "x").status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.refusal(&bob, "x").status, StatusCode::FORBIDDEN);
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
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{wrong}");
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
