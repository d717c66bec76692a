//! The `palaver` binary: parses the command line, opens the data directory, serves until
//! SIGINT or SIGTERM, then closes the database cleanly.

use std::process::ExitCode;

use axum::serve::ListenerExt;
use clap::Parser;
use palaver::config::{Cli, Command, Config};
use palaver::server::{Server, ServerExit};

fn main() -> ExitCode {
    let args = match Cli::parse().command {
        Command::Serve(args) => args,
        Command::Admin(command) => return palaver::admin::run(command),
    };
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("palaver: {error}");
            return ExitCode::from(2);
        }
    };
    let rust_log = std::env::var("RUST_LOG").ok();
    palaver::logs::init(config.log_format, rust_log.as_deref());
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("palaver: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    // reqwest (JWKS over HTTPS) needs a process-wide TLS provider; ring is the one we build.
    let _ = rustls::crypto::ring::default_provider().install_default();
    palaver::metrics::set_heap_probe(jemalloc_figures);
    // Each connection holds a descriptor; the connection cap stays below this limit.
    let open_files = palaver::transport::connections::raise_open_files_limit();
    tracing::info!(?open_files, "open-files limit");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let exit = runtime.block_on(async {
        let listener = listen(config.listen)
            .map_err(|e| format!("cannot listen on {} (PALAVER_LISTEN): {e}", config.listen))?;
        tracing::info!(address = %listener.local_addr()?, data_dir = %config.data_dir.display(), "palaver listening");
        // Without TCP_NODELAY, Nagle's algorithm holds back a small frame (an ack, a
        // `new-message`) written while an earlier one is unacknowledged, until the client's
        // delayed ACK: p99 send-to-deliver latency sat at 40-48 ms for any load (BENCHMARKS.md).
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
            }
        });
        let running = Server::builder(config).start(listener).await?;
        let stopper = running.stopper();
        tokio::spawn(async move {
            shutdown_signal().await;
            stopper.stop();
        });
        Ok::<_, Box<dyn std::error::Error>>(running.exited().await)
    })?;
    // Dropping the runtime drops every task still holding the service, and with the last handle
    // to the database it closes cleanly.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match exit {
        ServerExit::Stopped => {
            tracing::info!("database closed; bye");
            Ok(())
        }
        ServerExit::StorageFailed(error) => Err(format!(
            "storage failed ({error}); restart palaver to reopen and repair the database"
        )
        .into()),
        ServerExit::Io(error) => Err(error.into()),
    }
}

/// jemalloc, not glibc's malloc. Under glibc, the soak's 10,000 churning sockets grew RSS by
/// 6.6 MiB a minute (per-thread arenas fragmenting: 348 of 418 MiB were arena mappings; with
/// jemalloc, 2.6 MiB a minute), and argon2's 19 MiB blocks stayed resident once glibc raised
/// its mmap threshold (790 MB after 40 registrations) unless the threshold was pinned with
/// `mallopt`. jemalloc returns freed pages to the system on its own (docs/soak.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's figures for `/metrics`, read after advancing its epoch (it caches them).
fn jemalloc_figures() -> Option<palaver::metrics::HeapFigures> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(palaver::metrics::HeapFigures {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        retained: stats::retained::read().ok()? as u64,
    })
}

/// A listening socket with a backlog of `LISTEN_BACKLOG` (tokio's `bind` uses 1,024): a burst
/// of connects beyond the backlog overflows the kernel's accept queue, and a connection that
/// completed its handshake on the client's side waits there for a retransmission, so from the
/// client's side the server's first-byte bound runs seconds late.
fn listen(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(palaver::limits::LISTEN_BACKLOG)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
