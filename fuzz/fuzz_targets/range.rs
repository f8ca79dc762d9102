//! `parse_range` on arbitrary `Range` headers and blob lengths: the first 8 bytes are the length
//! (big-endian; a first byte with the top bit set makes it small, as most blobs' lengths are),
//! the rest the header.
//!
//! Beyond not panicking: an answered part lies within the blob, and for the plain forms
//! (`bytes=a-b`, `bytes=a-`, `bytes=-n`) it is what RFC 9110 says.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::registry::range::{parse_range, RangeAnswer};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (head, rest) = data.split_at(8);
    let raw = u64::from_be_bytes(head.try_into().unwrap());
    let len = if head[0] & 0x80 != 0 { raw % 4096 } else { raw };
    let header = String::from_utf8_lossy(rest);

    let answer = parse_range(Some(&header), len);
    if let RangeAnswer::Part(start, end) = answer {
        assert!(start <= end && end < len, "{header:?} {len}: {answer:?}");
    }
    if let Some(model) = model(&header, len) {
        assert_eq!(answer, model, "{header:?} of {len} bytes");
    }
    assert_eq!(parse_range(None, len), RangeAnswer::Full);
});

/// RFC 9110 §14.1.2 for one range written without whitespace; `None` for anything else.
fn model(header: &str, len: u64) -> Option<RangeAnswer> {
    let (a, b) = header.strip_prefix("bytes=")?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let num = |s: &str| s.parse::<u64>().ok();
    Some(match (a, b) {
        ("", n) if digits(n) => match num(n) {
            // a suffix longer than any blob: the whole of it
            None if len > 0 => RangeAnswer::Part(0, len - 1),
            Some(n) if n > 0 && len > 0 => RangeAnswer::Part(len - n.min(len), len - 1),
            _ => RangeAnswer::Unsatisfiable,
        },
        (a, "") if digits(a) => match num(a) {
            Some(a) if a < len => RangeAnswer::Part(a, len - 1),
            _ => RangeAnswer::Unsatisfiable,
        },
        (a, b) if digits(a) && digits(b) => match (num(a), num(b)) {
            // invalid (§14.1.1): the header is ignored
            (Some(a), Some(b)) if b < a => RangeAnswer::Full,
            (Some(a), Some(b)) if a < len => RangeAnswer::Part(a, b.min(len - 1)),
            (Some(_), Some(_)) => RangeAnswer::Unsatisfiable,
            // a last byte past u64: to the end
            (Some(a), None) if a < len => RangeAnswer::Part(a, len - 1),
            (Some(_), None) => RangeAnswer::Unsatisfiable,
            (None, _) => return None,
        },
        _ => return None,
    })
}
