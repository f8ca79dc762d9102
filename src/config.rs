//! Configuration: a TOML file (or the built-in default, `conf/wharf.toml`) plus command-line
//! overrides. Unknown keys are errors, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::upstream::{CredentialSource, Credentials, UpstreamSettings};

/// The documented default configuration, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../conf/wharf.toml");

/// The registry clients get when they name none (what dockerd's `registry-mirrors` means).
pub const DEFAULT_REGISTRY: &str = crate::registry::hub::DOCKER_HUB;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The admin listener (metrics, health), if any.
    #[serde(default)]
    pub admin: Option<String>,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_tag_ttl", with = "humantime_serde")]
    pub tag_ttl: Duration,
    #[serde(default = "default_negative_ttl", with = "humantime_serde")]
    pub negative_ttl: Duration,
    #[serde(default)]
    pub tag_ttl_rules: Vec<TtlRule>,
    #[serde(default)]
    pub offline: bool,
    /// Most bytes of manifests and blobs to keep on disk (least recently used go first).
    #[serde(default)]
    pub max_size: Option<u64>,
    #[serde(default = "default_memory_bytes")]
    pub memory_bytes: u64,
    #[serde(default = "default_memory_object_max")]
    pub memory_object_max: u64,
    #[serde(default)]
    pub threads: usize,
    /// Client connections at most (0: as many as the open-file limit allows).
    #[serde(default)]
    pub max_connections: usize,
    /// How long a kept-alive connection may take to send its next request (and a client to
    /// take one chunk of a blob).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a new connection may take to send its first request, headers and all.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Largest blob wharf fetches; longer bodies are abandoned, nothing stored.
    #[serde(default = "default_max_blob_size")]
    pub max_blob_size: u64,
    /// Free space the data directory keeps: fills that would eat into it are refused (507),
    /// and /readyz fails below it.
    #[serde(default = "default_min_free_space")]
    pub min_free_space: u64,
    /// Blob downloads in flight at most; past it a cold miss gets a 503 with Retry-After.
    #[serde(default = "default_max_fills")]
    pub max_fills: usize,
    /// Downloads no client waits for any more, at most (beyond: given up).
    #[serde(default = "default_max_orphan_fills")]
    pub max_orphan_fills: usize,
    /// Manifest fetches in flight at most; past it a cold manifest gets a 503 with Retry-After.
    #[serde(default = "default_max_manifest_fetches")]
    pub max_manifest_fetches: usize,
    /// Threads for the disk work of fills (writes, hashing, fsync), apart from hits'.
    #[serde(default = "default_fill_threads")]
    pub fill_threads: usize,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Who may read what (off when absent: everyone reads everything).
    #[serde(default)]
    pub access: Option<crate::front::access::AccessConfig>,
    /// TLS on `listen` (plain HTTP when absent).
    #[serde(default)]
    pub tls: Option<crate::front::tls::TlsConfig>,
    /// A bucket shared with other instances, behind the data directory (none when absent).
    #[serde(default)]
    pub store: Option<StoreConfig>,
    /// The other instances this one shares fetches with (alone when absent).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// A cluster of wharfs: who the members are, where they listen to each other, the secret
/// they prove themselves with.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The internal listener, where the other members ask this one.
    pub listen: String,
    /// The members' internal listeners, `host:port` (this instance's among them).
    #[serde(default)]
    pub members: Vec<String>,
    /// Or a name whose addresses are the members, `name:port` (a headless Service).
    #[serde(default)]
    pub members_dns: Option<String>,
    /// A file holding the cluster's shared secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Or the environment variable holding it.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// How often the members are looked at (and the DNS name resolved again).
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub health_interval: Duration,
    /// How long a member may take to accept a connection before it is passed over.
    #[serde(default = "default_peer_connect_timeout", with = "humantime_serde")]
    pub peer_connect_timeout: Duration,
    /// Mutual TLS between the members (none: plain HTTP, for a network only they reach).
    #[serde(default)]
    pub tls: Option<MemberTls>,
}

/// `[cluster.tls]`: this member's certificate, and the cluster's own CA, which signed every
/// member's. The internal listener takes only clients with a certificate from that CA, and a
/// member takes only such a certificate from the member it asks (any name: members are
/// addressed by whatever the roster says, often bare IPs).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberTls {
    /// This member's certificate chain (PEM), leaf first: for serving and for asking.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster's CA certificate(s) (PEM).
    pub ca: PathBuf,
}

fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_peer_connect_timeout() -> Duration {
    Duration::from_millis(500)
}

impl ClusterConfig {
    /// The shared secret (at least 16 bytes), read from its file or variable.
    pub fn secret(&self) -> Result<String, String> {
        let secret = match (&self.secret_file, &self.secret_env) {
            (Some(f), None) => std::fs::read_to_string(f)
                .map_err(|e| format!("cluster secret_file {}: {e}", f.display()))?,
            (None, Some(v)) => {
                std::env::var(v).map_err(|_| format!("cluster secret_env: ${v} is not set"))?
            }
            _ => return Err("[cluster] needs one of secret_file, secret_env".into()),
        };
        let secret = secret.trim().to_owned();
        if secret.len() < 16 {
            return Err("the cluster secret must be at least 16 characters".into());
        }
        Ok(secret)
    }

    /// Where the members are.
    pub fn roster(&self) -> Result<crate::cluster::Roster, String> {
        use crate::cluster::Roster;
        match (&self.members_dns, self.members.is_empty()) {
            (Some(_), false) => Err("[cluster] takes members or members_dns, not both".into()),
            (None, true) => Err("[cluster] needs members or members_dns".into()),
            (None, false) => Ok(Roster::Static(self.members.clone())),
            (Some(d), true) => {
                let (name, port) = d
                    .rsplit_once(':')
                    .and_then(|(n, p)| Some((n.to_owned(), p.parse().ok()?)))
                    .ok_or_else(|| format!("members_dns {d:?} must be name:port"))?;
                Ok(Roster::Dns(name, port))
            }
        }
    }
}

/// The shared store: a bucket URL (`s3://bucket/prefix`, `az://container/prefix`) and
/// `object_store`'s configuration keys (`aws_endpoint`, `aws_region`, `aws_allow_http`, …,
/// `azure_storage_account_name`, …), over the `AWS_*` and `AZURE_*` environment.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub url: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Most bytes the bucket may hold, for `wharf gc` (least recently used across the cluster
    /// go first).
    #[serde(default)]
    pub max_size: Option<u64>,
    /// How often each instance writes down what it served, for that recency.
    #[serde(default = "default_use_interval", with = "humantime_serde")]
    pub use_interval: Duration,
    /// Send clients to a presigned bucket URL valid this long for a blob this instance's disk
    /// lacks, instead of streaming it through (none: stream it). See [`Self::presigned_for`].
    #[serde(default, rename = "presigned_for", with = "humantime_serde")]
    presigned: Option<Duration>,
}

impl StoreConfig {
    /// `presigned_for`, checked: from a minute (a slow client must get to use it) to seven
    /// days (the most S3's signatures allow).
    pub fn presigned_for(&self) -> Result<Option<Duration>, String> {
        match self.presigned {
            Some(d) if d < Duration::from_secs(60) || d > Duration::from_secs(7 * 24 * 3600) => {
                Err(format!(
                    "[store] presigned_for = {:?}: give from \"1m\" to \"7d\"",
                    humantime::format_duration(d).to_string()
                ))
            }
            d => Ok(d),
        }
    }
}

fn default_use_interval() -> Duration {
    Duration::from_secs(600)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A tag TTL for the tags whose `registry/repository:tag` matches `pattern` (`*` matches any
/// run of characters, `/` and `:` included).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtlRule {
    pub pattern: String,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Default: `https://<host>` (Docker Hub: `https://registry-1.docker.io`).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub credential_helper: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub auth_hosts: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub tag_ttl: Option<Duration>,
}

fn default_listen() -> String {
    "0.0.0.0:5000".into()
}
fn default_tag_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_memory_bytes() -> u64 {
    256 << 20
}
fn default_memory_object_max() -> u64 {
    1 << 20
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_max_blob_size() -> u64 {
    32 << 30
}
fn default_min_free_space() -> u64 {
    256 << 20
}
fn default_max_fills() -> usize {
    256
}
fn default_max_orphan_fills() -> usize {
    32
}
fn default_max_manifest_fetches() -> usize {
    64
}
fn default_fill_threads() -> usize {
    4
}
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Overrides from the command line.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// Replaces the URL of the default upstream (docker.io).
    pub upstream: Option<String>,
    pub offline: bool,
    pub admin: Option<String>,
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.upstreams
            .entry(DEFAULT_REGISTRY.to_owned())
            .or_default();
        Ok(cfg)
    }

    /// Load `path` (or the built-in default), apply overrides and the environment, validate.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, String> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read config {}: {e}", p.display()))?;
                Config::parse(&text).map_err(|e| format!("config {}: {e}", p.display()))?
            }
            None => Config::parse(DEFAULT_TOML).expect("built-in config parses"),
        };
        if let Some(l) = &overrides.listen {
            cfg.listen = l.clone();
        }
        if let Some(d) = &overrides.data_dir {
            cfg.data_dir = Some(d.clone());
        }
        cfg.offline |= overrides.offline;
        if let Some(a) = &overrides.admin {
            cfg.admin = Some(a.clone());
        }
        let hub = cfg
            .upstreams
            .get_mut(DEFAULT_REGISTRY)
            .expect("parse adds docker.io");
        if let Some(u) = &overrides.upstream {
            hub.url = Some(u.clone());
        }
        if let Ok(u) = std::env::var("WHARF_UPSTREAM_USERNAME") {
            hub.username = Some(u);
        }
        if let Ok(p) = std::env::var("WHARF_UPSTREAM_PASSWORD") {
            hub.password = Some(p);
        }
        cfg.upstream_settings()?;
        for (key, addr) in [("listen", Some(&cfg.listen)), ("admin", cfg.admin.as_ref())] {
            if let Some(a) = addr {
                a.parse::<std::net::SocketAddr>()
                    .map_err(|e| format!("{key} = {a:?}: {e} (expected HOST:PORT)"))?;
            }
        }
        Ok(cfg)
    }

    /// The data directory: configured, or a per-user cache directory that needs no root.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        let from_env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(x) = from_env("XDG_CACHE_HOME") {
            return x.join("wharf");
        }
        if let Some(h) = from_env("HOME") {
            return h.join(".cache").join("wharf");
        }
        PathBuf::from("wharf-data")
    }

    /// Every configured upstream, checked and ready to build clients from.
    pub fn upstream_settings(&self) -> Result<Vec<UpstreamSettings>, String> {
        self.upstreams
            .iter()
            .map(|(host, u)| {
                let mut s = settings(host, u).map_err(|e| format!("upstreams.\"{host}\": {e}"))?;
                s.offline = self.offline;
                Ok(s)
            })
            .collect()
    }
}

fn settings(host: &str, u: &UpstreamConfig) -> Result<UpstreamSettings, String> {
    if !crate::registry::reference::is_registry_host(host) {
        return Err("a registry host is lowercase letters, digits, '.', '-' and ':port'".into());
    }
    let url = match &u.url {
        Some(url) => url.clone(),
        None if host == DEFAULT_REGISTRY => "https://registry-1.docker.io".into(),
        None => format!("https://{host}"),
    };
    let url = url::Url::parse(&url).map_err(|e| format!("url {url:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "url {:?} must be http(s)://host[:port]",
            url.as_str()
        ));
    }
    Ok(UpstreamSettings {
        registry: host.to_owned(),
        url,
        credentials: credential_source(host, u)?,
        ca_file: u.ca_file.clone(),
        auth_hosts: u.auth_hosts.clone(),
        connect_timeout: u.connect_timeout.unwrap_or(CONNECT_TIMEOUT),
        read_timeout: u.read_timeout.unwrap_or(READ_TIMEOUT),
        request_timeout: u.request_timeout.unwrap_or(REQUEST_TIMEOUT),
        tag_ttl: u.tag_ttl,
        offline: false,
    })
}

fn credential_source(host: &str, u: &UpstreamConfig) -> Result<Option<CredentialSource>, String> {
    let given = [
        u.password.is_some(),
        u.password_env.is_some(),
        u.password_file.is_some(),
        u.credential_helper.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() > 1 {
        return Err("give one of password, password_env, password_file, credential_helper".into());
    }
    if let Some(helper) = &u.credential_helper {
        if u.username.is_some() {
            return Err("a credential_helper supplies the username itself".into());
        }
        return Ok(Some(CredentialSource::helper(helper, host)));
    }
    let Some(username) = u.username.clone() else {
        return match given.iter().any(|&g| g) {
            true => Err("a password needs a username (\"<token>\" for an identity token)".into()),
            false => Ok(None),
        };
    };
    let fixed = |password: String| {
        Ok(Some(CredentialSource::Fixed(Credentials {
            username: username.clone(),
            password,
        })))
    };
    if let Some(p) = &u.password {
        return fixed(p.clone());
    }
    if let Some(var) = &u.password_env {
        let p = std::env::var(var)
            .map_err(|_| format!("password_env: environment variable {var} is not set"))?;
        return fixed(p);
    }
    if let Some(path) = &u.password_file {
        return Ok(Some(CredentialSource::File {
            username,
            path: path.clone(),
        }));
    }
    Err("username is given without a password, password_env or password_file".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_default_is_the_documented_file() {
        let c = Config::parse(DEFAULT_TOML).unwrap();
        assert_eq!(c.listen, "0.0.0.0:5000");
        assert_eq!(c.tag_ttl, Duration::from_secs(300));
        let ups = c.upstream_settings().unwrap();
        assert_eq!(ups.len(), 1);
        assert_eq!(ups[0].registry, "docker.io");
        assert_eq!(ups[0].url.as_str(), "https://registry-1.docker.io/");
        assert_eq!(ups[0].read_timeout, Duration::from_secs(15));
        // an empty file means the same defaults
        let e = Config::parse("").unwrap();
        assert_eq!(e.listen, c.listen);
        assert_eq!(e.memory_bytes, c.memory_bytes);
        assert_eq!(e.upstream_settings().unwrap()[0].url, ups[0].url);
    }

    #[test]
    fn presigned_for_is_one_a_bucket_honours() {
        let store = |v: &str| {
            let c = Config::parse(&format!("[store]\nurl = \"s3://b/p\"\n{v}")).unwrap();
            c.store.unwrap().presigned_for()
        };
        assert_eq!(store(""), Ok(None));
        assert_eq!(
            store("presigned_for = \"20m\""),
            Ok(Some(Duration::from_secs(1200)))
        );
        for refused in ["0s", "30s", "8days"] {
            let e = store(&format!("presigned_for = \"{refused}\"")).unwrap_err();
            assert!(e.contains("presigned_for"), "{e}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("listen = \"127.0.0.1:1\"\ntag_tll = \"1m\"\n").unwrap_err();
        assert!(e.contains("tag_tll"), "{e}");
        let e = Config::parse("[upstreams.\"ghcr.io\"]\nurll = \"x\"\n").unwrap_err();
        assert!(e.contains("urll"), "{e}");
    }

    #[test]
    fn upstream_table() {
        let c = Config::parse(
            r#"
            [upstreams."ghcr.io"]
            tag_ttl = "1h"
            [upstreams."registry.local:5000"]
            url = "http://10.0.0.5:5000"
            username = "me"
            password = "pw"
            "#,
        )
        .unwrap();
        let ups = c.upstream_settings().unwrap();
        let hosts: Vec<_> = ups.iter().map(|u| u.registry.as_str()).collect();
        assert_eq!(hosts, ["docker.io", "ghcr.io", "registry.local:5000"]);
        assert_eq!(ups[1].url.as_str(), "https://ghcr.io/");
        assert_eq!(ups[1].tag_ttl, Some(Duration::from_secs(3600)));
        assert!(ups[2].credentials.is_some());
        for bad in [
            "[upstreams.\"Bad/Host\"]\n",
            "[upstreams.\"x.io\"]\nurl = \"ftp://x.io\"\n",
            "[upstreams.\"x.io\"]\npassword = \"p\"\n",
            "[upstreams.\"x.io\"]\nusername = \"u\"\npassword = \"p\"\npassword_file = \"/f\"\n",
            "[upstreams.\"x.io\"]\nusername = \"u\"\npassword_env = \"WHARF_TEST_SURELY_UNSET\"\n",
        ] {
            let e = Config::parse(bad).unwrap().upstream_settings();
            assert!(e.is_err(), "{bad}");
        }
    }

    #[test]
    fn overrides_win() {
        let o = Overrides {
            listen: Some("127.0.0.1:7000".into()),
            data_dir: Some("/tmp/x".into()),
            upstream: Some("http://127.0.0.1:5010".into()),
            offline: true,
            admin: Some("127.0.0.1:7001".into()),
        };
        let c = Config::load(None, &o).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000");
        assert_eq!(c.data_dir(), PathBuf::from("/tmp/x"));
        assert!(c.offline);
        assert_eq!(c.admin.as_deref(), Some("127.0.0.1:7001"));
        let ups = c.upstream_settings().unwrap();
        assert_eq!(ups[0].url.as_str(), "http://127.0.0.1:5010/");
        let bad = Overrides {
            upstream: Some("ftp://x".into()),
            ..Default::default()
        };
        assert!(Config::load(None, &bad).is_err());
    }
}
