//! Repository names, tags and digests as the OCI distribution spec defines them.
//!
//! Everything that reaches the cache or an upstream URL has been through these parsers first, so
//! a path like `../../etc` can never become a file name or a request to somewhere unexpected.

use std::fmt;

use super::error::RegistryError;

/// A repository name: lowercase path components joined by `/`
/// (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`), at most 255 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        if s.is_empty() || s.len() > 255 || !s.split('/').all(valid_component) {
            return Err(RegistryError::name_invalid(s));
        }
        Ok(RepoName(s.to_owned()))
    }

    /// Docker Hub's rule: a one-component name is an official image under `library/`.
    pub fn with_library_prefix(self) -> Self {
        if self.0.contains('/') {
            self
        } else {
            RepoName(format!("library/{}", self.0))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One path component: alphanumeric runs separated by `.`, `_`, `__` or any number of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__" or "-+"
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let b = s.as_bytes();
        let first = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
        let rest = |x: u8| first(x) || x == b'.' || x == b'-';
        if b.is_empty() || b.len() > 128 || !first(b[0]) || !b[1..].iter().all(|&x| rest(x)) {
            return Err(RegistryError::tag_invalid(s));
        }
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sha256 content digest. It is the cache key for every manifest and blob; other algorithms
/// are refused because wharf could not verify what it stores under them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(RegistryError::digest_invalid(s, "expected algorithm:hex"));
        };
        if algo != "sha256" {
            return Err(RegistryError::digest_invalid(
                s,
                "only sha256 digests are supported",
            ));
        }
        let hex_ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex_ok {
            return Err(RegistryError::digest_invalid(
                s,
                "sha256 needs 64 lowercase hex digits",
            ));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).expect("checked hex");
        Ok(Digest(out))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// A 64-bit hash of the digest for in-memory tables: its first eight bytes, already as
    /// uniform as SHA-256 makes them (and stored digests are of verified content).
    pub fn hash64(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("eight bytes"))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(data).into())
    }

    pub fn hex(&self) -> String {
        self.hex_digits().to_owned()
    }

    /// `sha256:<hex>`, as a header value.
    pub fn header_value(&self) -> http::HeaderValue {
        let mut v = [0u8; 71];
        v[..7].copy_from_slice(b"sha256:");
        v[7..].copy_from_slice(self.hex_digits().as_bytes());
        http::HeaderValue::from_bytes(&v).expect("ASCII")
    }

    /// The 64 hex digits, in a stack buffer: replies hex-encode a digest or two each.
    fn hex_digits(&self) -> HexDigits {
        let mut out = [0u8; 64];
        hex::encode_to_slice(self.0, &mut out).expect("64 digits for 32 bytes");
        HexDigits(out)
    }
}

struct HexDigits([u8; 64]);

impl std::ops::Deref for HexDigits {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        f.write_str(&self.hex_digits())
    }
}

/// On disk (the tag index) a digest is its `sha256:<hex>` string.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a manifest request names: a tag (mutable) or a digest (immutable).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// A registry host as wharf keys things by it (and names directories after it): lowercase
/// letters, digits, '.', '-' and ':port', not dots alone.
pub fn is_registry_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-:".contains(&b))
        && !host.bytes().all(|b| b == b'.')
}

/// An image as people write it: `[registry/]name[:tag|@digest]`. Without a registry (a first
/// component with no `.` or `:` that is not `localhost`) it is Docker Hub's, where a
/// one-component name is an official image (`alpine` is `docker.io/library/alpine:latest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub name: RepoName,
    pub reference: Reference,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, RegistryError> {
        let (first, rest) = s.split_once('/').unwrap_or(("", s));
        let has_registry = first.contains('.') || first.contains(':') || first == "localhost";
        let (registry, path) = if has_registry {
            if !is_registry_host(first) {
                return Err(RegistryError::name_invalid(first));
            }
            (first.to_owned(), rest)
        } else {
            (super::hub::DOCKER_HUB.to_owned(), s)
        };
        let (path, reference) = match path.split_once('@') {
            Some((p, d)) => (p, Reference::Digest(Digest::parse(d)?)),
            None => match path.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') => (p, Reference::Tag(Tag::parse(t)?)),
                _ => (path, Reference::Tag(Tag::parse("latest")?)),
            },
        };
        let mut name = RepoName::parse(path)?;
        if registry == super::hub::DOCKER_HUB {
            name = super::hub::repository(&registry, &name).into_owned();
            // still a name: it is written out (archives) and read back
            if name.0.len() > 255 {
                return Err(RegistryError::name_invalid(path));
            }
        }
        Ok(ImageRef {
            registry,
            name,
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}/{}:{}", self.registry, self.name, t),
            Reference::Digest(d) => write!(f, "{}/{}@{}", self.registry, self.name, d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        let show = |s: &str| ImageRef::parse(s).unwrap().to_string();
        assert_eq!(show("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(show("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(show("me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(show("ghcr.io/me/app"), "ghcr.io/me/app:latest");
        assert_eq!(show("localhost:5000/app:1"), "localhost:5000/app:1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            show(&format!("quay.io/x/y@{d}")),
            format!("quay.io/x/y@{d}")
        );
        assert!(ImageRef::parse("UPPER/case").is_err());
        assert!(
            ImageRef::parse("../etc/x:1").is_err(),
            "a registry is no path"
        );
        assert!(ImageRef::parse("Reg.io/x").is_err());
        assert!(ImageRef::parse("a:b:c").is_err());
    }

    /// Found by the property tests (tests/parsers.rs): `library/` made a long Hub name longer
    /// than a name may be, so the image reference did not parse back from how it is shown.
    #[test]
    fn hub_names_stay_names_with_their_library_prefix() {
        let longest = "a".repeat(255 - "library/".len());
        let image = ImageRef::parse(&longest).unwrap();
        assert_eq!(ImageRef::parse(&image.to_string()).unwrap(), image);
        assert!(ImageRef::parse(&format!("{longest}a")).is_err());
        assert!(ImageRef::parse(&format!("docker.io/{longest}a:1")).is_err());
        // elsewhere a one-component name keeps the whole length
        assert!(ImageRef::parse(&format!("ghcr.io/{}", "a".repeat(255))).is_ok());
    }

    #[test]
    fn names() {
        for ok in [
            "alpine",
            "library/alpine",
            "a/b/c",
            "my-app",
            "a__b",
            "a.b",
            "x---y",
            "0",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "Alpine", "a//b", "/a", "a/", "-a", "a-", "a___b", "a..b", "..", "a/../b", "a b",
            "a%2fb",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
        assert!(RepoName::parse(&"a".repeat(256)).is_err());
        assert_eq!(
            RepoName::parse("alpine")
                .unwrap()
                .with_library_prefix()
                .as_str(),
            "library/alpine"
        );
        assert_eq!(
            RepoName::parse("me/app")
                .unwrap()
                .with_library_prefix()
                .as_str(),
            "me/app"
        );
    }

    #[test]
    fn tags() {
        for ok in ["latest", "1.2.3", "_x", "A-b.c_d"] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests() {
        let hex = "a".repeat(64);
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.to_string(), format!("sha256:{hex}"));
        assert_eq!(d.hex(), hex);
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(128))).is_err());
        assert!(Digest::parse(&hex).is_err());
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let d = Digest::of(b"x");
        assert_eq!(d.header_value().to_str().unwrap(), d.to_string());
    }

    #[test]
    fn references() {
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        assert!(matches!(
            Reference::parse(&format!("sha256:{}", "0".repeat(64))),
            Ok(Reference::Digest(_))
        ));
        assert!(Reference::parse("sha256:zz").is_err());
    }
}
