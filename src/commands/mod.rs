//! The commands besides `serve`: fill the cache without a client (`warm`), move it to another
//! machine (`export`, `import`), look at it (`ls`), shrink it (`gc`) and check it (`verify`).
//! Each works on the data directory the configuration names, the server running or not.

pub mod archive;
pub mod store;
pub mod warm;

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use crate::cache::Cache;
use crate::config::Config;
use crate::mirror::Mirror;

/// The mirror a command works on, and a runtime to drive it.
pub fn open(config: &Config) -> Result<(Arc<Mirror>, tokio::runtime::Runtime), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let mirror = Arc::new(Mirror::open(config)?);
    Ok((mirror, runtime))
}

/// The cache a command that needs no upstream works on (`export`, `import`, `ls`, `gc`,
/// `verify`): no upstream client is built, so these run whatever the upstreams' settings.
pub fn open_cache(config: &Config) -> Result<Cache, String> {
    Cache::open(&config.data_dir(), config.max_size, config.store.as_ref())
}

/// A byte progress bar on stderr (drawn only on a terminal, and never with `--json`).
pub fn progress(total: u64, what: &str, json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Print a command's result: JSON on stdout with `--json`, else the human lines.
pub fn report(json: bool, value: &serde_json::Value, human: &[String]) {
    if json {
        println!("{value}");
    } else {
        for line in human {
            println!("{line}");
        }
    }
}

/// `1.5 MiB`
pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
