//! `engram`: the command line. `engram serve` runs the server; `engram
//! config` prints the effective configuration; `engram bench` measures a
//! running server end to end.

use anyhow::Context;
use clap::{Parser, Subcommand};
use engram_server::config::{Overrides, ServerConfig};
use tracing_subscriber::EnvFilter;

/// jemalloc instead of the system allocator: memory freed by the engine
/// (a vector leaves each episode once it is indexed, see
/// docs/design/memory.md) goes back to the OS instead of staying in the
/// glibc heap, so resident memory follows what the engine holds.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, compiled in (`_RJEM_MALLOC_CONF` in the environment
/// still overrides them). `background_thread:true`: freed pages are
/// returned to the OS by jemalloc's own threads after the decay time
/// (10 s). Without them, an arena purges only when the threads that use it
/// allocate again, so memory freed by a burst (the vectors of memories that
/// were waiting to be indexed) stayed resident in arenas whose threads had
/// gone quiet: 4,554 B per memory resident for an account of 4,257 B at
/// 100K x 768-d, against 4,337 B with the threads (docs/design/memory.md).
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 23] = b"background_thread:true\0";

#[derive(Parser)]
#[command(name = "engram", version, about = "engram: a streaming memory server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (data under ./engram-data unless configured).
    Serve(Overrides),
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    Config(Overrides),
    /// Stream a data set into a running server over gRPC and measure
    /// throughput, ack latency, visibility, indexing lag, recall latency and
    /// recall@10; prints a table (and JSON with --json).
    Bench(engram_server::bench::BenchArgs),
    /// API keys: make a new one, or hash one for the keys file.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// TLS certificates for tests and first setups.
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random key (first line), then its entry for the keys
    /// file (TOML). The key itself is not stored anywhere: keep it.
    Generate {
        /// The key's name (unique in the file; appears in logs and errors).
        #[arg(long)]
        name: String,
        /// Roles: read, write, admin (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "read,write")]
        roles: Vec<String>,
        /// Space ids or prefixes ending in '*' ('*' = every space), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        spaces: Vec<String>,
    },
    /// Print the keys file's hash of KEY (sha256:...).
    Hash {
        /// The key.
        key: String,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Write a fresh CA (ca.pem) and a server certificate signed by it
    /// (server.pem, server.key) into DIR.
    Generate {
        /// Where to write the files.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Names and addresses the certificate is for (repeat the flag).
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1", "::1"])]
        hosts: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(o) => {
            let config = ServerConfig::load(&o)?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Bench(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("engram-bench")
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(engram_server::bench::run(args))
        }
        Command::Keys(KeysCommand::Generate {
            name,
            roles,
            spaces,
        }) => {
            let key = engram_server::auth::keys::generate();
            let quote = |v: &[String]| {
                v.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let entry = format!(
                "[[keys]]\nname = {name:?}\nhash = \"{}\"\nroles = [{}]\nspaces = [{}]\n",
                engram_server::auth::keys::hash_string(&key),
                quote(&roles),
                quote(&spaces)
            );
            // Refuse an entry the server would refuse.
            engram_server::auth::KeyTable::parse(&entry).map_err(anyhow::Error::msg)?;
            println!("{key}");
            print!("{entry}");
            Ok(())
        }
        Command::Keys(KeysCommand::Hash { key }) => {
            println!("{}", engram_server::auth::keys::hash_string(&key));
            Ok(())
        }
        Command::Tls(TlsCommand::Generate { dir, hosts }) => {
            engram_server::tls::generate(&dir, &hosts).map_err(anyhow::Error::msg)?;
            println!(
                "wrote {0}/ca.pem, {0}/server.pem, {0}/server.key for {1}",
                dir.display(),
                hosts.join(", ")
            );
            Ok(())
        }
        Command::Serve(o) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_env("ENGRAM_LOG")
                        .unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let config = ServerConfig::load(&o)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("engram-rt")
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(engram_server::serve(config, shutdown_signal()))?;
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
