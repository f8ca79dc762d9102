//! Configuration: a TOML file (or the built-in default, `conf/wharf.toml`) plus command-line
//! overrides. Unknown keys are errors, so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::upstream::{Credentials, UpstreamSettings};

/// The documented default configuration, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../conf/wharf.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default = "default_tag_ttl", with = "humantime_serde")]
    pub tag_ttl: Duration,
    #[serde(default = "default_memory_bytes")]
    pub memory_bytes: u64,
    #[serde(default = "default_memory_object_max")]
    pub memory_object_max: u64,
    #[serde(default)]
    pub threads: usize,
    #[serde(default)]
    pub upstream: UpstreamConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default = "default_upstream_url")]
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        toml::from_str("").expect("empty upstream table uses defaults")
    }
}

fn default_listen() -> String {
    "0.0.0.0:5000".into()
}
fn default_tag_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_memory_bytes() -> u64 {
    256 << 20
}
fn default_memory_object_max() -> u64 {
    1 << 20
}
fn default_upstream_url() -> String {
    "https://registry-1.docker.io".into()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(15)
}

/// Overrides from the command line.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub upstream: Option<String>,
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
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
        if let Some(u) = &overrides.upstream {
            cfg.upstream.url = u.clone();
        }
        if let Ok(u) = std::env::var("WHARF_UPSTREAM_USERNAME") {
            cfg.upstream.username = Some(u);
        }
        if let Ok(p) = std::env::var("WHARF_UPSTREAM_PASSWORD") {
            cfg.upstream.password = Some(p);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("listen = {:?}: {e} (expected HOST:PORT)", self.listen))?;
        self.upstream_settings()?;
        if self.upstream.username.is_some() != self.upstream.password.is_some() {
            return Err("upstream: username and password go together".into());
        }
        Ok(())
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

    pub fn upstream_settings(&self) -> Result<UpstreamSettings, String> {
        let u = &self.upstream;
        let url = url::Url::parse(&u.url).map_err(|e| format!("upstream url {:?}: {e}", u.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!(
                "upstream url {:?} must be http(s)://host[:port]",
                u.url
            ));
        }
        let credentials = match (&u.username, &u.password) {
            (Some(user), Some(pass)) => Some(Credentials {
                username: user.clone(),
                password: pass.clone(),
            }),
            _ => None,
        };
        Ok(UpstreamSettings {
            registry: "docker.io".into(),
            url,
            credentials,
            ca_file: u.ca_file.clone(),
            connect_timeout: u.connect_timeout,
            read_timeout: u.read_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_default_is_the_documented_file() {
        let c = Config::parse(DEFAULT_TOML).unwrap();
        assert_eq!(c.listen, "0.0.0.0:5000");
        assert_eq!(c.tag_ttl, Duration::from_secs(300));
        assert_eq!(c.upstream.url, "https://registry-1.docker.io");
        assert_eq!(c.upstream.read_timeout, Duration::from_secs(15));
        // an empty file means the same defaults
        let e = Config::parse("").unwrap();
        assert_eq!(e.listen, c.listen);
        assert_eq!(e.memory_bytes, c.memory_bytes);
        assert_eq!(e.upstream.url, c.upstream.url);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("listen = \"127.0.0.1:1\"\ntag_tll = \"1m\"\n").unwrap_err();
        assert!(e.contains("tag_tll"), "{e}");
        let e = Config::parse("[upstream]\nurll = \"x\"\n").unwrap_err();
        assert!(e.contains("urll"), "{e}");
    }

    #[test]
    fn overrides_win() {
        let o = Overrides {
            listen: Some("127.0.0.1:7000".into()),
            data_dir: Some("/tmp/x".into()),
            upstream: Some("http://127.0.0.1:5010".into()),
        };
        let c = Config::load(None, &o).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000");
        assert_eq!(c.data_dir(), PathBuf::from("/tmp/x"));
        assert_eq!(
            c.upstream_settings().unwrap().url.as_str(),
            "http://127.0.0.1:5010/"
        );
        let bad = Overrides {
            upstream: Some("ftp://x".into()),
            ..Default::default()
        };
        assert!(Config::load(None, &bad).is_err());
    }
}
