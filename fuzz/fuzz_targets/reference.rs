//! The name parsers on arbitrary strings: repository names, tags, digests, references, registry
//! hosts and whole image references.
//!
//! Beyond not panicking: whatever parses displays as it was written (or, for an image
//! reference, in a canonical form that parses back to the same thing), and nothing that parses
//! could climb out of a directory it names.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::registry::reference::is_registry_host;
use wharf::registry::{Digest, ImageRef, Reference, RepoName, Tag};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s = &*text;

    if let Ok(name) = RepoName::parse(s) {
        assert_eq!(name.as_str(), s);
        assert!(s.len() <= 255);
        assert!(s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
        let prefixed = name.clone().with_library_prefix();
        if s.contains('/') {
            assert_eq!(prefixed, name);
        } else {
            assert_eq!(prefixed.as_str(), format!("library/{s}"));
        }
    }

    if let Ok(tag) = Tag::parse(s) {
        assert_eq!(tag.to_string(), s);
        assert!(s.len() <= 128 && !s.starts_with('.') && !s.starts_with('-'));
        assert_eq!(Reference::parse(s).ok(), Some(Reference::Tag(tag)));
    }

    if let Ok(d) = Digest::parse(s) {
        assert_eq!(d.to_string(), s);
        assert_eq!(d.header_value().to_str().unwrap(), s);
        assert_eq!(format!("sha256:{}", d.hex()), s);
        assert_eq!(Reference::parse(s).ok(), Some(Reference::Digest(d)));
    }

    if let Ok(r) = Reference::parse(s) {
        assert_eq!(r.to_string(), s);
    }

    if is_registry_host(s) {
        assert!(s != "." && s != "..", "{s:?}");
        assert!(!s.contains(['/', '\\', '\0']) && !s.chars().any(char::is_whitespace));
    }

    if let Ok(image) = ImageRef::parse(s) {
        assert!(is_registry_host(&image.registry), "{image:?}");
        if image.registry == "docker.io" {
            assert!(image.name.as_str().contains('/'), "{image:?}");
        }
        let shown = image.to_string();
        let again = ImageRef::parse(&shown)
            .unwrap_or_else(|e| panic!("{s:?} parsed as {shown:?}, which does not: {e:?}"));
        assert_eq!(again, image, "{s:?}");
        assert_eq!(again.to_string(), shown);
    }

    // what anything hashes to names it
    let d = Digest::of(data);
    assert_eq!(Digest::parse(&d.to_string()).ok(), Some(d));
});
