//! `parse_htpasswd` on arbitrary file contents.
//!
//! Beyond not panicking: every entry is a bcrypt hash under a user name without a `:`, each
//! entry is one line of the file, and the entries written out again parse back to themselves.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::front::access::parse_htpasswd;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(entries) = parse_htpasswd(&text) else {
        return;
    };
    assert!(entries.len() <= text.lines().count());
    let mut written = String::from("# written again\n");
    for (user, hash) in &entries {
        assert!(!user.contains(':') && !user.contains('\n'), "{user:?}");
        assert!(hash.starts_with("$2"), "{hash:?}");
        let line = format!("{user}:{hash}");
        assert!(text.lines().any(|l| l.trim() == line), "{line:?}");
        written.push_str(&line);
        written.push('\n');
    }
    assert_eq!(parse_htpasswd(&written).as_ref(), Ok(&entries));
});
