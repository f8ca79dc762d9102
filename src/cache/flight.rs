//! Request coalescing for small upstream calls (manifests): concurrent callers with the same key
//! share one computation, which runs detached so that it completes even if they all go away.
//! Computations in flight are bounded: past `max`, a new key is refused rather than started
//! (each holds an upstream connection and up to a whole manifest in memory until it ends).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

pub struct Flights<K, V> {
    map: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
    max: usize,
}

/// `max` computations are in flight already.
#[derive(Debug)]
pub struct Full(pub usize);

impl<K, V> Flights<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(max: usize) -> Self {
        Flights {
            map: Arc::default(),
            max,
        }
    }

    /// The value for `key`: from a computation already in flight (second field `true`), or
    /// from `work`, spawned now unless `max` are in flight. `None` if the computation panicked.
    pub async fn run<F>(&self, key: K, work: impl FnOnce() -> F) -> Result<(Option<V>, bool), Full>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (mut rx, joined) = {
            let mut map = self.map.lock().expect("flight map");
            match map.get(&key) {
                Some(rx) => (rx.clone(), true),
                None if map.len() >= self.max => return Err(Full(self.max)),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let fut = work();
                    let map = self.map.clone();
                    tokio::spawn(async move {
                        let v = fut.await;
                        map.lock().expect("flight map").remove(&key);
                        let _ = tx.send(Some(v));
                    });
                    (rx, false)
                }
            }
        };
        let v = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        Ok((v, joined))
    }
}
