//! The `wharf` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wharf::config::{Config, LogFormat, Overrides};

/// wharf: a pull-through caching mirror for container registries.
///
/// Point dockerd (`registry-mirrors`), containerd (hosts.toml) or podman (registries.conf) at
/// wharf: it answers pulls from its cache and fetches what it lacks from the upstream registries
/// (Docker Hub by default), verifying every digest before caching it.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror.
    Serve {
        /// Configuration file (TOML). Without it, the built-in default (conf/wharf.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on, HOST:PORT (default 0.0.0.0:5000).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory for the cache (default ~/.cache/wharf).
        #[arg(long)]
        data: Option<PathBuf>,
        /// URL for the default upstream (docker.io), replacing the configured one
        /// (default https://registry-1.docker.io).
        #[arg(long)]
        upstream: Option<String>,
        /// Never contact any upstream: serve what is cached, answer 404 for the rest.
        #[arg(long)]
        offline: bool,
        /// Admin listener, HOST:PORT: Prometheus /metrics, /healthz, /readyz.
        #[arg(long)]
        admin: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data,
            upstream,
            offline,
            admin,
        } => {
            let overrides = Overrides {
                listen,
                data_dir: data,
                upstream,
                offline,
                admin,
            };
            let config = match Config::load(config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            init_logging(config.log_format);
            match wharf::front::serve(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("wharf: {message}");
    ExitCode::from(2)
}

/// Logs go to stderr; `WHARF_LOG` filters them (default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}
