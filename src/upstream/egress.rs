//! Where an upstream may send wharf. The upstream names its token realm and its redirect
//! targets itself, so without rules it could have wharf hand over its password to any host,
//! or fetch from wharf's own internal network and cache the answer under a digest.
//!
//! - Credentials go to a token realm only over HTTPS, or on the upstream's own host, or on a
//!   host listed for it (`auth_hosts`).
//! - Blob requests follow redirects to HTTPS or to the upstream's own host; everything else
//!   (manifests, tag lists, referrers, tokens) only within the same origin.
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

    /// Whether wharf's credentials for this upstream may go to `realm`; `Err` says why not.
    pub fn may_send_credentials(&self, realm: &Url) -> Result<(), String> {
        let host = host_of(realm);
        if realm.scheme() == "https" || self.trusted(&host) {
            return Ok(());
        }
        Err(format!(
            "the token realm {realm} is plain HTTP on {host}, which is neither the upstream's host ({}) nor listed in its auth_hosts",
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
        let is_blob = first.path().contains("/blobs/");
        if !is_blob {
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
        if next.scheme() != "https" && host_of(next) != self.home {
            return Err(format!(
                "a redirect of a blob to plain HTTP on {}, which is not the upstream's host",
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

/// A URL's host, lower case, without the brackets of an IPv6 address.
fn host_of(url: &Url) -> String {
    match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(h) => h.to_string().to_ascii_lowercase(),
        None => String::new(),
    }
}

/// Loopback, private, link-local, shared (CGNAT), unspecified, broadcast or multicast: an
/// address inside someone's network, not on the internet.
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
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
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
    }

    #[test]
    fn redirects_move_blobs_only_and_never_inside() {
        let e = Egress::new(&url("https://registry-1.docker.io"), &[]);
        let blob = url("https://registry-1.docker.io/v2/library/a/blobs/sha256:00");
        let manifest = url("https://registry-1.docker.io/v2/library/a/manifests/1");
        let cdn = url("https://production.cloudflare.docker.com/x?sig=1");
        assert!(e.may_follow(&blob, &cdn).is_ok());
        assert!(e.may_follow(&manifest, &cdn).is_err());
        assert!(e
            .may_follow(&manifest, &url("https://registry-1.docker.io/v2/x"))
            .is_ok());
        assert!(e.may_follow(&blob, &url("http://cdn.example/x")).is_err());
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
        let blob = url("http://127.0.0.1:5010/v2/a/blobs/sha256:00");
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
