//! Where an upstream may send wharf. The upstream names its token realm and its redirect
//! targets itself, so without rules it could have wharf hand over its password to any host,
//! or fetch from wharf's own internal network and cache the answer under a digest.
//!
//! - Credentials go to a token realm only over HTTPS, or on a host listed for the upstream
//!   (`auth_hosts`), or on the upstream's own host when the upstream itself is plain HTTP (an
//!   HTTPS upstream never has them sent in the clear).
//! - Blob requests follow redirects to HTTPS, or to plain HTTP on the upstream's own host when
//!   it is plain HTTP itself; everything else (manifests, tag lists, referrers, tokens) only
//!   within the same origin.
//! - No host but the upstream's own (and those listed) is reached at a loopback, private,
//!   link-local or otherwise internal address — whether it is named by an IP or resolves to one
//!   — unless the upstream itself is at one (an internal registry may send wharf to its own
//!   internal object store; Docker Hub may not send it into the operator's network).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

/// The hosts one upstream may have wharf reach.
#[derive(Debug)]
pub struct Egress {
    /// The upstream's own host.
    home: String,
    /// Whether the upstream itself is reached over plain HTTP.
    home_plain: bool,
    /// Hosts listed for it in the config: trusted as its own.
    listed: Vec<String>,
    /// Whether the upstream itself is at an internal address (known from an IP in its URL,
    /// else once its name resolves).
    home_internal: AtomicBool,
}

impl Egress {
    pub fn new(upstream: &Url, listed: &[String]) -> Egress {
        let home_internal = match upstream.host() {
            Some(url::Host::Ipv4(ip)) => is_internal(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => is_internal(IpAddr::V6(ip)),
            _ => upstream.host_str() == Some("localhost"),
        };
        Egress {
            home: host_of(upstream),
            home_plain: upstream.scheme() == "http",
            listed: listed.iter().map(|h| h.to_ascii_lowercase()).collect(),
            home_internal: AtomicBool::new(home_internal),
        }
    }

    /// Whether internal addresses are fair game: the upstream is at one itself.
    fn inside(&self) -> bool {
        self.home_internal.load(Ordering::Relaxed)
    }

    fn trusted(&self, host: &str) -> bool {
        host == self.home || self.listed.iter().any(|l| l == host)
    }

    /// Whether plain HTTP to `host` is no worse than what the upstream asked for itself.
    fn plain_ok(&self, host: &str) -> bool {
        (self.home_plain && host == self.home) || self.listed.iter().any(|l| l == host)
    }

    /// Whether wharf's credentials for this upstream may go to `realm`; `Err` says why not.
    pub fn may_send_credentials(&self, realm: &Url) -> Result<(), String> {
        let host = host_of(realm);
        if realm.scheme() == "https" || self.plain_ok(&host) {
            return Ok(());
        }
        Err(format!(
            "the token realm {realm} is plain HTTP on {host}, which is neither a plain-HTTP upstream's own host ({}) nor listed in its auth_hosts",
            self.home
        ))
    }

    /// Whether `url` may be reached at all: its host is trusted, or it is no internal
    /// address, or the upstream is internal too. (Names are checked again when they resolve:
    /// [`Egress::resolver`].)
    pub fn may_contact(&self, url: &Url) -> Result<(), String> {
        let host = host_of(url);
        if self.trusted(&host) || self.inside() {
            return Ok(());
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) if is_internal(IpAddr::V4(ip)) => {}
            Some(url::Host::Ipv6(ip)) if is_internal(IpAddr::V6(ip)) => {}
            _ => return Ok(()),
        }
        Err(format!(
            "{host} is an internal address, and the upstream ({}) is not inside",
            self.home
        ))
    }

    /// Whether a request that began at `first` may follow a redirect to `next`.
    pub fn may_follow(&self, first: &Url, next: &Url) -> Result<(), String> {
        if !is_blob_path(first.path()) {
            let same = first.scheme() == next.scheme()
                && host_of(first) == host_of(next)
                && first.port_or_known_default() == next.port_or_known_default();
            return match same {
                true => Ok(()),
                false => Err(format!(
                    "a redirect to {} for what is not a blob: only blobs move to other hosts",
                    next.origin().ascii_serialization()
                )),
            };
        }
        if next.scheme() != "https" && !self.plain_ok(&host_of(next)) {
            return Err(format!(
                "a redirect of a blob to plain HTTP on {}, which is not a plain-HTTP upstream's own host",
                host_of(next)
            ));
        }
        self.may_contact(next)
    }

    /// The redirect policy for this upstream's HTTP client.
    pub fn redirect_policy(self: &Arc<Self>) -> reqwest::redirect::Policy {
        let me = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > 10 {
                return attempt.error("more than 10 redirects");
            }
            let first = attempt.previous().first().cloned();
            match first.map(|f| me.may_follow(&f, attempt.url())) {
                Some(Err(why)) => {
                    tracing::warn!("not following a redirect: {why}");
                    attempt.error(why)
                }
                _ => attempt.follow(),
            }
        })
    }

    /// A resolver that keeps internal addresses from every host but the trusted ones.
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn Resolve> {
        Arc::new(GuardedResolver {
            egress: self.clone(),
        })
    }
}

/// Whether `path` asks for a blob: `/v2/<name>/blobs/sha256:<hex>` (a repository may have
/// a component named `blobs`: `/v2/x/blobs/manifests/1` is a manifest).
fn is_blob_path(path: &str) -> bool {
    path.rsplit_once("/blobs/").is_some_and(|(_, d)| {
        d.strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// A URL's host, lower case, without the brackets of an IPv6 address.
fn host_of(url: &Url) -> String {
    match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string().to_ascii_lowercase(),
        None => String::new(),
    }
}

/// Loopback, private, link-local, shared (CGNAT), benchmarking, documentation, reserved,
/// unspecified, broadcast or multicast — and IPv6 forms that carry such an IPv4 address
/// (mapped, compatible, NAT64, 6to4), site-local and unique-local: an address inside someone's
/// network, not on the internet.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 192 && o[1] == 0 && (o[2] == 0 || o[2] == 2))
                || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                || (o[0] == 203 && o[1] == 0 && o[2] == 113)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let o = v6.octets();
            let v4 = |at: usize| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    o[at],
                    o[at + 1],
                    o[at + 2],
                    o[at + 3],
                ))
            };
            if v6.to_ipv4_mapped().is_some() || s[..6] == [0; 6] {
                // ::ffff:a.b.c.d, and the old compatible ::a.b.c.d (:: and ::1 among them)
                return v6.is_unspecified() || v6.is_loopback() || is_internal(v4(12));
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_internal(v4(12)); // NAT64
            }
            if s[0] == 0x2002 {
                return is_internal(v4(2)); // 6to4
            }
            v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || s[..4] == [0x100, 0, 0, 0]
        }
    }
}

struct GuardedResolver {
    egress: Arc<Egress>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let egress = self.egress.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if host == egress.home && found.iter().any(|a| is_internal(a.ip())) {
                egress.home_internal.store(true, Ordering::Relaxed);
            }
            let open = egress.trusted(&host) || egress.inside();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| open || !is_internal(a.ip()))
                .collect();
            if allowed.is_empty() && !found.is_empty() {
                return Err(format!("{host} resolves only to internal addresses").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn credentials_need_https_or_a_trusted_host() {
        let e = Egress::new(&url("http://registry.local:5000"), &["auth.local".into()]);
        assert!(e
            .may_send_credentials(&url("https://auth.example/token"))
            .is_ok());
        assert!(e
            .may_send_credentials(&url("http://registry.local:5001/token"))
            .is_ok());
        assert!(e
            .may_send_credentials(&url("http://auth.local/token"))
            .is_ok());
        assert!(e
            .may_send_credentials(&url("http://evil.example/token"))
            .is_err());
        // an HTTPS upstream never has them sent in the clear, not even to its own host
        let hub = Egress::new(&url("https://registry.example"), &[]);
        assert!(hub
            .may_send_credentials(&url("http://registry.example:6666/token"))
            .is_err());
        assert!(hub
            .may_send_credentials(&url("https://registry.example:6666/token"))
            .is_ok());
    }

    #[test]
    fn a_blob_is_what_asks_for_a_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(is_blob_path(&format!("/v2/library/a/blobs/{d}")));
        assert!(is_blob_path(&format!("/v2/x/blobs/y/blobs/{d}")));
        assert!(!is_blob_path("/v2/redirman/blobs/manifests/latest"));
        assert!(!is_blob_path("/v2/x/blobs/tags/list"));
        assert!(!is_blob_path(&format!("/v2/x/blobs/{d}/more")));
    }

    #[test]
    fn internal_addresses_in_every_form() {
        for inside in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "198.18.0.1",
            "192.0.2.1",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::7f00:1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "2001:db8::1",
            "ff02::1",
        ] {
            assert!(is_internal(inside.parse().unwrap()), "{inside}");
        }
        for outside in [
            "1.1.1.1",
            "104.18.0.1",
            "2606:4700::1111",
            "64:ff9b::101:101",
            "2002:101:101::",
        ] {
            assert!(!is_internal(outside.parse().unwrap()), "{outside}");
        }
    }

    #[test]
    fn redirects_move_blobs_only_and_never_inside() {
        let e = Egress::new(&url("https://registry-1.docker.io"), &[]);
        let blob = url(&format!(
            "https://registry-1.docker.io/v2/library/a/blobs/sha256:{}",
            "0".repeat(64)
        ));
        let manifest = url("https://registry-1.docker.io/v2/library/a/manifests/1");
        let cdn = url("https://production.cloudflare.docker.com/x?sig=1");
        assert!(e.may_follow(&blob, &cdn).is_ok());
        assert!(e.may_follow(&manifest, &cdn).is_err());
        assert!(e
            .may_follow(&manifest, &url("https://registry-1.docker.io/v2/x"))
            .is_ok());
        assert!(e.may_follow(&blob, &url("http://cdn.example/x")).is_err());
        assert!(
            e.may_follow(&blob, &url("http://registry-1.docker.io:6379/x"))
                .is_err(),
            "an HTTPS upstream's blob is not moved to plain HTTP"
        );
        for inside in [
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:192.168.0.1]/x",
            "https://100.64.0.1/x",
        ] {
            assert!(e.may_follow(&blob, &url(inside)).is_err(), "{inside}");
        }
        // an upstream inside may redirect inside: to its own host, or over HTTPS
        let lab = Egress::new(&url("http://127.0.0.1:5010"), &[]);
        let blob = url(&format!(
            "http://127.0.0.1:5010/v2/a/blobs/sha256:{}",
            "0".repeat(64)
        ));
        assert!(lab
            .may_follow(&blob, &url("http://127.0.0.1:5012/data"))
            .is_ok());
        assert!(lab
            .may_follow(&blob, &url("http://127.0.0.2:5012/data"))
            .is_err());
        assert!(lab
            .may_follow(&blob, &url("https://127.0.0.2:5012/data"))
            .is_ok());
    }

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused_but_for_trusted_hosts() {
        let e = Arc::new(Egress::new(&url("http://registry.test"), &[]));
        let r = e.resolver();
        let inside = r.resolve("localhost".parse().unwrap()).await;
        assert!(
            inside.is_err(),
            "localhost is internal and not the upstream's host"
        );
        let home = Arc::new(Egress::new(&url("http://localhost:5000"), &[]));
        let addrs: Vec<_> = home
            .resolver()
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
    }
}
