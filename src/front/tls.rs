//! TLS on the registry listener, through Pingora's rustls support: the certificate chain and
//! key from files, HTTP/2 and HTTP/1.1 by ALPN, the certificate replaced without dropping a
//! connection when the files change or on SIGHUP, and — with a client CA — client certificates
//! that identify their holders (by the subject's common name) to [`super::access`].
//!
//! Files are read and checked at start, and a problem is an error naming the file (Pingora's
//! own loader panics). A reload that fails keeps the certificate in use and says why.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[tls]` in the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM) whose client certificates identify clients as `cert:<CN>`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// A plain-HTTP listener beside the TLS one (for labs), if any.
    #[serde(default)]
    pub plain_listen: Option<String>,
}

/// What a client's certificate says it is: its subject's common name.
#[derive(Clone, Debug)]
pub struct ClientName(pub String);

/// The TLS settings for the listener, and the certificate they serve (to reload it).
pub fn settings(config: &TlsConfig) -> Result<(TlsSettings, Arc<Certificate>), String> {
    let cert = Arc::new(Certificate::load(&config.cert, &config.key)?);
    let mut settings = TlsSettings::with_callbacks(Box::new(NameClients))
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    settings.set_cert_resolver(cert.clone());
    settings.enable_h2();
    if let Some(ca) = &config.client_ca {
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(ca)? {
            roots
                .add(c)
                .map_err(|e| format!("client_ca {}: unusable certificate: {e}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            // a client without a certificate may still say who it is otherwise (or not)
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("client_ca {}: {e}", ca.display()))?;
        settings.set_client_cert_verifier(verifier);
    }
    Ok((settings, cert))
}

/// The TLS settings for a cluster's internal listener: this member's certificate, and a
/// client certificate from the cluster's CA required of every connection.
pub fn member_settings(tls: &crate::config::MemberTls) -> Result<TlsSettings, String> {
    let cert = Arc::new(Certificate::load(&tls.cert, &tls.key)?);
    let mut settings = TlsSettings::with_callbacks(Box::new(NameClients))
        .map_err(|e| format!("cannot set up the cluster's TLS: {e}"))?;
    settings.set_cert_resolver(cert);
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&tls.ca)? {
        roots
            .add(c)
            .map_err(|e| format!("cluster ca {}: unusable certificate: {e}", tls.ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("cluster ca {}: {e}", tls.ca.display()))?;
    settings.set_client_cert_verifier(verifier);
    Ok(settings)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The server certificate in use, replaced when its files change.
#[derive(Debug)]
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

impl Certificate {
    fn load(cert: &Path, key: &Path) -> Result<Certificate, String> {
        let loaded = certified(cert, key)?;
        Ok(Certificate {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new((Arc::new(loaded), modified(cert, key))),
        })
    }

    /// Read the files again if they changed since (or always, when `force`); on a problem the
    /// certificate in use stays. Returns whether it was replaced.
    pub fn reload(&self, force: bool) -> bool {
        let now = modified(&self.cert, &self.key);
        if !force && now == self.current.read().expect("cert").1 {
            return false;
        }
        match certified(&self.cert, &self.key) {
            Ok(k) => {
                *self.current.write().expect("cert") = (Arc::new(k), now);
                tracing::info!("TLS certificate reloaded from {}", self.cert.display());
                true
            }
            Err(e) => {
                tracing::error!("keeping the TLS certificate in use: {e}");
                false
            }
        }
    }

    /// Reload on SIGHUP, and when the files change (looked at every 5 s), on a thread of its
    /// own, for the life of the process.
    pub fn watch(self: &Arc<Self>) -> Result<(), String> {
        let me = self.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot watch the TLS certificate: {e}"))?;
        std::thread::Builder::new()
            .name("wharf-tls".into())
            .spawn(move || {
                rt.block_on(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    let mut hup = match signal(SignalKind::hangup()) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            tracing::warn!("cannot take SIGHUP: {e}");
                            None
                        }
                    };
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        let forced = tokio::select! {
                            _ = tick.tick() => false,
                            _ = async { hup.as_mut().expect("guarded").recv().await }, if hup.is_some() => true,
                        };
                        me.reload(forced);
                    }
                })
            })
            .map_err(|e| format!("cannot watch the TLS certificate: {e}"))?;
        Ok(())
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("cert").0.clone())
    }
}

fn modified(cert: &Path, key: &Path) -> Option<SystemTime> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    m(cert).max(m(key))
}

/// The chain and key of `cert` and `key`, checked to belong together.
fn certified(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = read_certs(cert)?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| format!("unusable private key in {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "the key in {} does not belong to the certificate in {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(certified)
}

/// Names a client after its certificate, once the handshake is done.
struct NameClients;

#[async_trait]
impl TlsAccept for NameClients {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_owned();
        Some(Arc::new(ClientName(cn)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn bad_files_are_named_and_a_bad_reload_keeps_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = pair(dir.path(), "one");
        let (_, k2) = pair(dir.path(), "two");
        let missing = dir.path().join("missing.crt");
        let e = Certificate::load(&missing, &k1).unwrap_err();
        assert!(e.contains("missing.crt"), "{e}");
        let e = Certificate::load(&c1, &k2).unwrap_err();
        assert!(
            e.contains("does not belong") && e.contains("two.key"),
            "{e}"
        );
        std::fs::write(dir.path().join("junk.key"), "not a key").unwrap();
        let e = Certificate::load(&c1, &dir.path().join("junk.key")).unwrap_err();
        assert!(e.contains("junk.key"), "{e}");

        let cert = Certificate::load(&c1, &k1).unwrap();
        assert!(!cert.reload(false), "nothing changed");
        std::fs::write(&k1, "garbage").unwrap();
        assert!(!cert.reload(true), "a broken key is not taken");
        assert!(cert.current.read().unwrap().0.keys_match().is_ok());
    }
}
