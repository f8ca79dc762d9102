//! Request coalescing for small upstream calls (manifests): concurrent callers with the same key
//! share one computation, which runs detached so that it completes even if they all go away.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

pub struct Flights<K, V> {
    map: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            map: Arc::default(),
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The value for `key`: from a computation already in flight (second field `true`), or
    /// from `work`, spawned now. `None` if the computation panicked.
    pub async fn run<F>(&self, key: K, work: impl FnOnce() -> F) -> (Option<V>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (mut rx, joined) = {
            let mut map = self.map.lock().expect("flight map");
            match map.get(&key) {
                Some(rx) => (rx.clone(), true),
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
        (v, joined)
    }
}
