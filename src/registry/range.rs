//! The `Range` header of a blob request (RFC 9110 §14): which bytes of a blob of known length a
//! client asked for.
//!
//! Clients resume interrupted layer downloads with it. Only a single `bytes=` range is served as
//! such; anything else (several ranges, another unit, nonsense) is answered with the whole blob,
//! which the RFC allows, so a client never gets less than it can use.

/// A byte range request against a blob of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable range: send everything (multi-range requests are answered this way too).
    Full,
    /// Inclusive `start..=end`, always within the blob (`start <= end < len`).
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// What to send for the `Range` header `header` (absent: everything) of a `len`-byte blob.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeAnswer {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match position(b) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(n) if len > 0 => RangeAnswer::Part(len.saturating_sub(n), len - 1),
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Full,
        },
        (false, _) => {
            let Some(start) = position(a) else {
                return RangeAnswer::Full;
            };
            let end = if b.is_empty() {
                Some(u64::MAX)
            } else {
                position(b)
            };
            match end {
                None => RangeAnswer::Full,
                Some(end) if end < start => RangeAnswer::Full,
                Some(_) if start >= len => RangeAnswer::Unsatisfiable,
                Some(end) => RangeAnswer::Part(start, end.min(len - 1)),
            }
        }
        (true, true) => RangeAnswer::Full,
    }
}

/// A byte position (`1*DIGIT`); one too large for a u64 is as good as `u64::MAX`, for no blob
/// is that long.
fn position(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Part(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
    }

    /// Found by fuzzing (fuzz/fuzz_targets/range.rs): a position past u64 made the header
    /// unreadable (the whole blob, 200) where RFC 9110 means "to the end" or "beyond it".
    #[test]
    fn positions_past_u64() {
        use RangeAnswer::*;
        let huge = "99320222229422114922";
        assert_eq!(
            parse_range(Some(&format!("bytes=0-{huge}")), 10),
            Part(0, 9)
        );
        assert_eq!(parse_range(Some(&format!("bytes=-{huge}")), 10), Part(0, 9));
        assert_eq!(
            parse_range(Some(&format!("bytes={huge}-")), 10),
            Unsatisfiable
        );
        // only digits are positions
        assert_eq!(parse_range(Some("bytes=+1-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=-+3"), 10), Full);
    }
}
