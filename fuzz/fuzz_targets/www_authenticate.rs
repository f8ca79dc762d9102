//! `Challenge::parse` on arbitrary `WWW-Authenticate` values, as a hostile upstream may send.
//!
//! Beyond not panicking: the scheme decides the kind, and a parsed Bearer challenge, written
//! out again as a well-formed header (quoted strings, escapes and all), parses back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::upstream::auth::Challenge;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Some(challenge) = Challenge::parse(&text) else {
        return;
    };
    let scheme = text
        .trim()
        .split(' ')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match &challenge {
        Challenge::Basic => assert!(scheme.starts_with("basic"), "{text:?}"),
        Challenge::Bearer { realm, service } => {
            assert_eq!(scheme, "bearer", "{text:?}");
            let mut header = format!("Bearer realm={}", quoted(realm));
            if let Some(s) = service {
                header.push_str(&format!(", service={}", quoted(s)));
            }
            header.push_str(r#", scope="repository:a/b:pull,push""#);
            assert_eq!(
                Challenge::parse(&header).as_ref(),
                Some(&challenge),
                "{text:?} rewritten as {header:?}"
            );
        }
    }
});

/// An RFC 9110 quoted-string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}
