//! The access log: one line per request, on by default, so it must cost next to nothing.
//!
//! Going through `tracing` cost a warm small-object request about a third more instructions
//! (its field visitors and formatter), so the line is written here by hand, in the same text
//! or JSON shape as the rest of the log, into a buffer that a thread of its own writes to
//! stderr in large pieces. It is still filtered by `WHARF_LOG` like any `wharf::access` event.
//! Lossy: past [`MAX_PENDING`] bytes not yet written, lines are dropped and counted, rather
//! than requests waiting for a slow terminal or disk.

use std::io::Write as _;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crate::config::LogFormat;

/// One request, as logged.
pub struct Line<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: usize,
    pub outcome: &'a str,
    pub ms: f64,
    pub registry: &'a str,
    pub user: Option<&'a str>,
}

struct Writer {
    format: LogFormat,
    pending: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    dropped: u64,
}

/// Bytes of lines waiting for the writer past which new ones are dropped.
const MAX_PENDING: usize = 4 << 20;
/// How long the writer, woken by a first line, lets more gather before it writes: at most
/// a hundred writes a second, however many requests.
const GATHER: Duration = Duration::from_millis(10);

static WRITER: OnceLock<Writer> = OnceLock::new();

/// Write access lines in `format` from now on (`serve` calls this once, before it listens).
pub fn start(format: LogFormat) {
    let writer = Writer {
        format,
        pending: Mutex::default(),
        wake: Condvar::new(),
    };
    if WRITER.set(writer).is_ok() {
        let spawned = std::thread::Builder::new()
            .name("wharf-access-log".into())
            .spawn(|| loop {
                flush(GATHER);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the access log's writer: {e}");
        }
        // Pingora ends the process with exit(): what is pending is written out then
        // SAFETY: registers a plain function without arguments.
        unsafe { libc::atexit(at_exit) };
    }
}

extern "C" fn at_exit() {
    flush(Duration::ZERO);
}

/// Wait for a line, let more gather for `gather`, and write them all out.
fn flush(gather: Duration) {
    let Some(w) = WRITER.get() else { return };
    {
        let mut p = w.pending.lock().expect("access log");
        while p.buf.is_empty() && p.dropped == 0 && !gather.is_zero() {
            p = w.wake.wait(p).expect("access log");
        }
    }
    std::thread::sleep(gather);
    let (buf, dropped) = {
        let mut p = w.pending.lock().expect("access log");
        let fresh = Vec::with_capacity(p.buf.len().next_power_of_two());
        (
            std::mem::replace(&mut p.buf, fresh),
            std::mem::take(&mut p.dropped),
        )
    };
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(&buf);
    if dropped > 0 {
        let _ = writeln!(
            err,
            "access log: {dropped} lines dropped (stderr could not keep up)"
        );
    }
}

/// Log one request.
pub fn write(line: &Line) {
    let Some(w) = WRITER.get() else {
        return; // not serving: there is no access log
    };
    if !tracing::enabled!(target: "wharf::access", tracing::Level::INFO) {
        return;
    }
    // formatted right into the shared buffer: a line is a few hundred instructions, less
    // than a buffer of its own would cost to allocate, fill and copy
    let mut p = w.pending.lock().expect("access log");
    let first = p.buf.is_empty();
    if p.buf.len() > MAX_PENDING {
        p.dropped += 1;
        return;
    }
    format_line(&mut p.buf, line, w.format);
    drop(p);
    if first {
        w.wake.notify_one();
    }
}

/// One line as `tracing` writes an event in `format`: text
/// (`<time>  INFO wharf::access: method="GET" path="/v2/…" status=200 … registry="docker.io"`)
/// or JSON (`{"timestamp":…,"level":"INFO","fields":{…},"target":"wharf::access"}`).
fn format_line(out: &mut Vec<u8>, l: &Line, format: LogFormat) {
    let json = format == LogFormat::Json;
    if json {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(out);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{");
    } else {
        timestamp(out);
        out.extend_from_slice(b"  INFO wharf::access: ");
    }
    // `name=` or `"name":`, each after a separator but the first
    let key = |out: &mut Vec<u8>, name: &str| {
        if json {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
        } else {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
        }
    };
    out.extend_from_slice(if json { b"\"method\":" } else { b"method=" });
    quoted(out, l.method);
    key(out, "path");
    quoted(out, l.path);
    key(out, "status");
    number(out, l.status as u64);
    key(out, "bytes");
    number(out, l.bytes as u64);
    key(out, "outcome");
    quoted(out, l.outcome);
    key(out, "ms");
    tenths(out, l.ms);
    key(out, "registry");
    quoted(out, l.registry);
    if let Some(u) = l.user {
        key(out, "user");
        quoted(out, u);
    }
    if json {
        out.extend_from_slice(b"},\"target\":\"wharf::access\"}\n");
    } else {
        out.push(b'\n');
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds to a tenth, as `0.3` or `16.1`.
fn tenths(out: &mut Vec<u8>, ms: f64) {
    let t = (ms * 10.0).round().max(0.0) as u64;
    number(out, t / 10);
    out.push(b'.');
    out.push(b'0' + (t % 10) as u8);
}

/// The time now in RFC 3339 with microseconds (`2026-12-01T15:05:57.423949Z`). The part up to
/// the second is formatted once a second per thread.
fn timestamp(out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((u64::MAX, Vec::new())) };
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with_borrow_mut(|(second, prefix)| {
        if *second != now.as_secs() {
            *second = now.as_secs();
            prefix.clear();
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
            let _ = write!(prefix, "{}", humantime::format_rfc3339_seconds(whole));
            prefix.pop(); // the 'Z'
        }
        out.extend_from_slice(prefix);
    });
    let micros = now.subsec_micros();
    out.push(b'.');
    let digits = itoa::Buffer::new().format(micros).len();
    out.extend(std::iter::repeat_n(b'0', 6 - digits));
    number(out, micros as u64);
    out.push(b'Z');
}

/// The bytes [`quoted`] escapes: control characters, `"` and `\`.
static ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b < 0x20 || b == 0x7f || b == b'"' as usize || b == b'\\' as usize;
        b += 1;
    }
    t
};

/// `s` in double quotes, escaped as JSON (which the text format's readers take too): a
/// client's path or name cannot break the line or forge another. Runs that need no escape
/// (nearly all of it) are copied whole.
fn quoted(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let mut rest = s.as_bytes();
    while let Some(i) = rest.iter().position(|&b| ESCAPED[b as usize]) {
        out.extend_from_slice(&rest[..i]);
        match rest[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str, user: Option<&'static str>) -> Line<'a> {
        Line {
            method: "GET",
            path,
            status: 200,
            bytes: 1234,
            outcome: "hit-memory",
            ms: 0.3,
            registry: "docker.io",
            user,
        }
    }

    #[test]
    fn text_lines_read_like_the_rest_of_the_log() {
        let mut out = Vec::new();
        let l = line("/v2/library/a/manifests/1", Some("alice"));
        format_line(&mut out, &l, LogFormat::Text);
        let s = String::from_utf8(out).unwrap();
        let (at, rest) = s.split_once("  INFO wharf::access: ").unwrap();
        assert_eq!((at.len(), &at[19..20]), (27, "."), "{at}");
        let when = humantime::parse_rfc3339(at).unwrap();
        let off = SystemTime::now().duration_since(when).unwrap();
        assert!(off < Duration::from_secs(5), "{at}");
        assert_eq!(
            rest,
            "method=\"GET\" path=\"/v2/library/a/manifests/1\" status=200 bytes=1234 \
             outcome=\"hit-memory\" ms=0.3 registry=\"docker.io\" user=\"alice\"\n"
        );
    }

    #[test]
    fn json_lines_are_json_whatever_the_client_sent() {
        let mut out = Vec::new();
        let l = line("/v2/a\"b\\c\n\u{1}", None);
        format_line(&mut out, &l, LogFormat::Json);
        let mut slow = line("/", None);
        slow.ms = 1234.56;
        tenths(&mut out, slow.ms);
        assert!(out.ends_with(b"\n1234.6"));
        out.truncate(out.len() - 6);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["fields"]["path"], "/v2/a\"b\\c\n\u{1}");
        assert_eq!(v["fields"]["status"], 200);
        assert_eq!(v["fields"]["outcome"], "hit-memory");
        assert_eq!(v["target"], "wharf::access");
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
