//! A certificate authority of a test's own, issuing server, client and cluster-member
//! certificates.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A certificate authority of the test's own.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate and key (PEM) for `cn`, a server for 127.0.0.1 or a client.
    pub fn issue(&self, cn: &str, server: bool) -> (String, String) {
        let names = if server {
            vec!["127.0.0.1".into(), "localhost".into()]
        } else {
            vec![]
        };
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate written to `dir` as wharf.crt and wharf.key (replacing them at
    /// once, as a deployment tool would).
    pub fn install_server(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue("wharf", true);
        let (c, k) = (dir.join("wharf.crt"), dir.join("wharf.key"));
        for (path, text) in [(&k, key), (&c, cert)] {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (c, k)
    }

    /// A cluster member's certificate and key (PEM) for `cn`: for serving and for asking,
    /// and for no name at all (members are reached by whatever address the roster says).
    pub fn issue_member(&self, cn: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}
