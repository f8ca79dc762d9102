//! Client connections, bounded: wharf never runs out of file descriptors because of them.
//!
//! Every connection counts against `max_connections` (by default what the open-file limit
//! allows, at most 10,000). A connection that waits for a request — idle between keep-alive requests, or one
//! that connected and has not finished its headers — serves nobody, so when a new connection
//! arrives at the bound the oldest such one is closed to make room (as nginx reuses idle
//! keep-alive connections). Only when every connection is busy answering is a new one refused,
//! with a 503 it can retry; the ones being served are never disturbed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::metrics::METRICS;

pub struct Connections {
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: usize,
    /// Connections waiting for a request, oldest first, with the signal that closes them.
    waiting: BTreeMap<u64, Arc<Notify>>,
    next: u64,
}

/// One open connection, counted while it lives.
pub struct Conn {
    all: Arc<Connections>,
    close: Arc<Notify>,
}

/// A connection marked as waiting for a request: it may be closed for a newcomer meanwhile.
pub struct Waiting<'c> {
    conn: &'c Conn,
    key: u64,
}

impl Connections {
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max: max.max(1),
            state: Mutex::default(),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Admit a new connection, closing the longest-waiting idle one if the bound is reached;
    /// `None` if every connection is busy (refuse this one).
    pub fn open(self: &Arc<Self>) -> Option<Conn> {
        let mut st = self.state.lock().expect("connections");
        if st.open >= self.max {
            let (_, oldest) = match st.waiting.pop_first() {
                Some(w) => w,
                None => {
                    METRICS.connections_refused.inc();
                    return None;
                }
            };
            oldest.notify_one();
            METRICS.connections_evicted.inc();
        }
        st.open += 1;
        METRICS.connections.set(st.open as i64);
        Some(Conn {
            all: self.clone(),
            close: Arc::new(Notify::new()),
        })
    }
}

impl Conn {
    /// Mark the connection as waiting for a request until the guard is dropped.
    pub fn waiting(&self) -> Waiting<'_> {
        let mut st = self.all.state.lock().expect("connections");
        let key = st.next;
        st.next += 1;
        st.waiting.insert(key, self.close.clone());
        Waiting { conn: self, key }
    }
}

impl Waiting<'_> {
    /// Resolves when the connection must close to make room for a new one.
    pub async fn closed(&self) {
        self.conn.close.notified().await
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut st = self.conn.all.state.lock().expect("connections");
        st.waiting.remove(&self.key);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut st = self.all.state.lock().expect("connections");
        st.open -= 1;
        METRICS.connections.set(st.open as i64);
    }
}

/// Raise this process's soft limit on open files to its hard limit; returns the limit now.
pub fn raise_open_files() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        if l.rlim_cur < l.rlim_max {
            let was = l.rlim_cur;
            l.rlim_cur = l.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 {
                tracing::info!("open-file limit raised from {was} to {}", l.rlim_cur);
            } else {
                l.rlim_cur = was;
            }
        }
    }
    l.rlim_cur
}

/// Open files that each connection and each fill may need: a connection its socket and the
/// blob file it sends, a fill its upstream socket and temp file; plus a reserve for
/// listeners, logs, the tag index and idle upstream connections.
const PER_CONNECTION: u64 = 2;
const PER_FILL: u64 = 2;
const RESERVE: u64 = 128;
/// Connections at most when none are configured, however high the open-file limit: each may
/// hold up to a megabyte of request headers being read (Pingora's limit).
const AUTO_MAX: u64 = 10_000;

/// How many connections and fills `open_files` allow, given what is configured (0
/// connections: as many as the limit allows, at most [`AUTO_MAX`]). Says so when the limit
/// holds them back.
pub fn budget(open_files: u64, max_connections: usize, max_fills: usize) -> (usize, usize) {
    let usable = open_files.saturating_sub(RESERVE);
    let fills = (max_fills as u64).min(usable / 4 / PER_FILL).max(1);
    let for_connections = usable.saturating_sub(fills * PER_FILL) / PER_CONNECTION;
    let connections = match max_connections {
        0 => for_connections.clamp(16, AUTO_MAX),
        n => (n as u64).min(for_connections.max(1)),
    };
    let held_back = connections < max_connections as u64 || fills < max_fills as u64;
    if held_back || (max_connections == 0 && connections < 1024) {
        tracing::warn!(
            "the open-file limit ({open_files}) is low: wharf serves at most {connections} connections and {fills} fills at once (max_connections = {max_connections}, max_fills = {max_fills}); raise it (ulimit -n, LimitNOFILE=)"
        );
    }
    (connections as usize, fills as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_make_room_busy_ones_do_not() {
        let all = Connections::new(2);
        let a = all.open().unwrap();
        let b = all.open().unwrap();
        // both busy: a third is refused
        assert!(all.open().is_none());
        // `a` waits for a request: a newcomer closes it
        let c = {
            let waiting = a.waiting();
            let closed = waiting.closed();
            futures_util::pin_mut!(closed);
            assert!(futures_util::FutureExt::now_or_never(&mut closed).is_none());
            let c = all.open().expect("room made");
            assert!(futures_util::FutureExt::now_or_never(&mut closed).is_some());
            c
        };
        drop(a);
        // b and c are busy again
        assert!(all.open().is_none());
        drop(b);
        assert!(all.open().is_some());
        drop(c);
    }

    #[test]
    fn the_budget_follows_the_open_file_limit() {
        // plenty: as configured
        assert_eq!(budget(1 << 20, 5000, 256), (5000, 256));
        // 0 connections: what the limit allows, up to 10,000
        assert_eq!(budget(16384, 0, 256).0 as u64, (16384 - 128 - 512) / 2);
        assert_eq!(budget(1 << 20, 0, 256).0, 10_000);
        // 1024: fewer connections, and fills that leave room for them
        let (c, f) = budget(1024, 0, 256);
        assert_eq!(f, 112);
        assert_eq!(c as u64, (1024 - 128 - 224) / 2);
        assert!(2 * c + 2 * f + 128 <= 1024);
        // a limit below the reserve still gives a server that starts
        assert_eq!(budget(100, 0, 256), (16, 1));
    }
}
