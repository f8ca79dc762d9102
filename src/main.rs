//! The `wharf` command line: `serve`, and the commands that work on its cache.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use wharf::commands::{self, archive, human_bytes, report};
use wharf::config::{Config, LogFormat, Overrides};
use wharf::registry::image::Platform;
use wharf::registry::ImageRef;

/// wharf: a pull-through caching mirror for container registries.
///
/// Point dockerd (`registry-mirrors`), containerd (hosts.toml) or podman (registries.conf) at
/// wharf: it answers pulls from its cache and fetches what it lacks from the upstream registries
/// (Docker Hub by default), verifying every digest before caching it.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Where the cache is and which registries it mirrors: the same for every command.
#[derive(Args)]
struct Common {
    /// Configuration file (TOML). Without it, the built-in default (conf/wharf.toml).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Data directory for the cache (default ~/.cache/wharf).
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// URL for the default upstream (docker.io), replacing the configured one
    /// (default https://registry-1.docker.io).
    #[arg(long, global = true)]
    upstream: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror.
    Serve {
        /// Address to listen on, HOST:PORT (default 0.0.0.0:5000).
        #[arg(long)]
        listen: Option<String>,
        /// Never contact any upstream: serve what is cached, answer 404 for the rest.
        #[arg(long)]
        offline: bool,
        /// Admin listener, HOST:PORT: Prometheus /metrics, /healthz, /readyz.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Pull images into the cache through the configured upstreams, without a client.
    Warm {
        /// Images, e.g. alpine:3.20, ghcr.io/org/app@sha256:…
        #[arg(required = true)]
        images: Vec<String>,
        /// Only this platform of multi-platform images (os/arch[/variant]); default all.
        #[arg(long)]
        platform: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write the cache (or the named images) as an OCI image layout: a directory, or a tar
    /// when PATH ends in .tar. Tags are included.
    Export {
        #[arg(long)]
        out: PathBuf,
        /// Images to export (default: everything cached).
        images: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Load an OCI image layout (directory or .tar) into the cache, verifying every digest.
    Import {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List cached images: tags, digests, sizes, last use.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Evict least recently used content now, down to --max-size (default: max_size).
    Gc {
        /// Bytes to keep at most.
        #[arg(long)]
        max_size: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every cached object; remove and report those that do not match.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // glibc's allocator, set for streaming:
    // - it gives every thread that allocates its own arena; with a blocking pool reading chunks
    //   on many threads that grows the heap for nothing. Two arenas serve two cores.
    // - it maps blocks above a threshold (128 KiB at first) on their own and hands free memory
    //   at the top of a heap back to the kernel once twice that is free: a cold fill's network
    //   buffers (~400 KiB each, many in flight) then fault fresh zeroed pages in over and over
    //   (33k page faults per 256 MiB). With blocks up to 1 MiB from the heap and 8 MiB kept
    //   free before trimming: 2-5k faults, 20 % less CPU per cold fill, idle RSS 10 MiB not 6.
    // SAFETY: mallopt only sets allocator parameters; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("wharf: {e}");
            ExitCode::from(2)
        }
    }
}

/// Ok(false): the command ran but something in it failed (already reported).
fn run(cli: Cli) -> Result<bool, String> {
    let (common, command) = (cli.common, cli.command);
    let config = load_config(common, &command)?;
    let _log_writer = init_logging(config.log_format, matches!(command, Command::Serve { .. }));
    match command {
        Command::Serve { .. } => wharf::front::serve(&config).map(|_| true),
        Command::Warm {
            images: names,
            platform,
            json,
        } => warm(&config, &names, platform.as_deref(), json),
        Command::Export {
            out,
            images: names,
            json,
        } => export(&config, out, &names, json),
        Command::Import { path, json } => import(&config, &path, json),
        Command::Ls { json } => ls(&config, json),
        Command::Gc { max_size, json } => gc(&config, max_size, json),
        Command::Verify { json } => verify(&config, json),
    }
}

/// The configuration, with what the command line says overriding the file.
fn load_config(common: Common, command: &Command) -> Result<Config, String> {
    let mut overrides = Overrides {
        data_dir: common.data,
        upstream: common.upstream,
        ..Overrides::default()
    };
    if let Command::Serve {
        listen,
        offline,
        admin,
    } = command
    {
        overrides.listen = listen.clone();
        overrides.offline = *offline;
        overrides.admin = admin.clone();
    }
    Config::load(common.config.as_deref(), &overrides)
}

/// The images named on the command line, the first that is no image reference failing all.
fn images(names: &[String]) -> Result<Vec<ImageRef>, String> {
    names
        .iter()
        .map(|n| ImageRef::parse(n).map_err(|e| format!("{n}: {}", e.message)))
        .collect()
}

/// `wharf warm`: each image pulled in turn, a failure reported without stopping the rest.
fn warm(
    config: &Config,
    names: &[String],
    platform: Option<&str>,
    json: bool,
) -> Result<bool, String> {
    let platform = platform.map(Platform::parse).transpose()?;
    let list = images(names)?;
    let (mirror, rt) = commands::open(config)?;
    let mut ok = true;
    for image in &list {
        match rt.block_on(commands::warm::warm(
            &mirror,
            image,
            platform.as_ref(),
            json,
        )) {
            Ok(w) => report(
                json,
                &w.json(),
                &[format!(
                    "{} {}: {} manifests, {} blobs, {} ({} fetched)",
                    w.image,
                    w.digest,
                    w.manifests,
                    w.blobs,
                    human_bytes(w.bytes),
                    human_bytes(w.fetched)
                )],
            ),
            Err(e) => {
                ok = false;
                report(
                    json,
                    &json!({"image": image.to_string(), "error": e}),
                    &[format!("error: {e}")],
                );
            }
        }
    }
    Ok(ok)
}

/// `wharf export`: the cache, or the images named, written out as an OCI image layout.
fn export(config: &Config, out: PathBuf, names: &[String], json: bool) -> Result<bool, String> {
    let list = images(names)?;
    let cache = commands::open_cache(config)?;
    let e = archive::export(&cache, &out, &list)?;
    report(
        json,
        &json!({"out": out, "images": e.images, "objects": e.objects, "bytes": e.bytes}),
        &[format!(
            "exported {} images ({} objects, {}) to {}",
            e.images,
            e.objects,
            human_bytes(e.bytes),
            out.display()
        )],
    );
    Ok(true)
}

/// `wharf import`: an OCI image layout loaded into the cache; false if any of it was rejected.
fn import(config: &Config, path: &std::path::Path, json: bool) -> Result<bool, String> {
    let cache = commands::open_cache(config)?;
    let i = archive::import(&cache, path)?;
    let mut lines = vec![format!(
        "imported {} objects ({}), tags: {}",
        i.objects,
        human_bytes(i.bytes),
        if i.tags.is_empty() {
            "none".into()
        } else {
            i.tags.join(", ")
        }
    )];
    lines.extend(i.rejected.iter().map(|r| format!("rejected: {r}")));
    report(
        json,
        &json!({"objects": i.objects, "bytes": i.bytes, "tags": i.tags, "rejected": i.rejected}),
        &lines,
    );
    Ok(i.rejected.is_empty())
}

/// `wharf ls`: the cached images, one a line.
fn ls(config: &Config, json: bool) -> Result<bool, String> {
    let cache = commands::open_cache(config)?;
    let list = commands::store::ls(&cache)?;
    let lines: Vec<String> = list
        .iter()
        .map(|l| {
            let age = l.last_use.elapsed().map(|d| d.as_secs()).unwrap_or(0);
            format!(
                "{:<60} {:.19}  {:>10}  used {} ago",
                l.image,
                l.digest,
                human_bytes(l.size),
                humantime::format_duration(std::time::Duration::from_secs(age))
            )
        })
        .collect();
    let value = json!(list.iter().map(|l| l.json()).collect::<Vec<_>>());
    report(json, &value, &lines);
    Ok(true)
}

/// `wharf gc`: eviction down to `--max-size`, or the configured `max_size`.
/// With a shared store, the bucket: down to `--max-size` or `[store] max_size`, by the use
/// records of every instance (each instance's disk keeps its own `max_size` as it serves).
fn gc(config: &Config, max_size: Option<u64>, json: bool) -> Result<bool, String> {
    let cache = commands::open_cache(config)?;
    if let Some(bucket) = &cache.shared {
        let max = max_size
            .or(config.store.as_ref().and_then(|s| s.max_size))
            .ok_or("give --max-size (or max_size in [store])")?;
        let done = wharf::cache::uses::collect(bucket, max)
            .map_err(|e| format!("cannot collect the shared store: {e}"))?;
        report(
            json,
            &json!({"removed": done.removed, "bytes": done.bytes, "use_records": done.records}),
            &[format!(
                "removed {} objects ({}) from the shared store, by {} use records",
                done.removed,
                human_bytes(done.bytes),
                done.records
            )],
        );
        return Ok(true);
    }
    let max = max_size
        .or(config.max_size)
        .ok_or("give --max-size (or max_size in the config)")?;
    let (n, bytes) = commands::store::gc(&cache, max)?;
    report(
        json,
        &json!({"removed": n, "bytes": bytes}),
        &[format!("removed {n} objects ({})", human_bytes(bytes))],
    );
    Ok(true)
}

/// `wharf verify`: every cached object re-hashed; false if any was bad (and removed).
fn verify(config: &Config, json: bool) -> Result<bool, String> {
    let cache = commands::open_cache(config)?;
    let v = commands::store::verify(&cache, json)?;
    let mut lines = vec![format!(
        "verified {} objects ({}): {} bad",
        v.objects,
        human_bytes(v.bytes),
        v.bad.len()
    )];
    lines.extend(v.bad.iter().map(|b| format!("removed: {b}")));
    lines.extend(
        v.unreadable
            .iter()
            .map(|b| format!("unreadable (kept): {b}")),
    );
    report(
        json,
        &json!({"objects": v.objects, "bytes": v.bytes, "bad": v.bad, "unreadable": v.unreadable}),
        &lines,
    );
    Ok(v.bad.is_empty() && v.unreadable.is_empty())
}

/// Logs go to stderr; `WHARF_LOG` filters them (default `info` for serve, `warn` for the
/// other commands, whose output is their report). Serving, they go through a thread of their
/// own that writes them in batches, dropping lines rather than holding requests when stderr
/// cannot keep up (the access log has a writer of its own: `front::log`). The guard returned
/// flushes what is left when dropped.
fn init_logging(
    format: LogFormat,
    serving: bool,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) = if serving {
        let (w, g) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .thread_name("wharf-log")
            .finish(std::io::BufWriter::with_capacity(
                64 << 10,
                std::io::stderr(),
            ));
        (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(w),
            Some(g),
        )
    } else {
        (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
            None,
        )
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    guard
}
