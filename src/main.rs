//! The `palaver` binary: parses the command line, opens the data directory, serves until
//! SIGINT or SIGTERM, then closes the database cleanly.

use std::process::ExitCode;
use std::sync::Arc;

use axum::serve::ListenerExt;
use clap::Parser;
use palaver::clock::SystemClock;
use palaver::config::{Cli, Command, Config};
use palaver::server;
use palaver::storage::{self, Durability, WriterExit};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let Cli {
        command: Command::Serve(args),
    } = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("palaver: {error}");
            return ExitCode::from(2);
        }
    };
    match serve(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("palaver: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    // reqwest (JWKS over HTTPS) needs a process-wide TLS provider; ring is the one we build.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = storage::open_dir(&config.data_dir)?;
    let (store, writer, writer_task) = storage::start(db, Durability::Immediate)?;

    // The writer does blocking fsyncs: it gets a thread of its own, so they never stall the
    // async workers that serve sockets. It reports how it ended, so a storage failure can stop
    // the server (see `WriterExit::Failed`).
    let (stop_writer, writer_stop) = tokio::sync::oneshot::channel::<()>();
    let (writer_exit_tx, writer_exit) = tokio::sync::oneshot::channel::<WriterExit>();
    let writer_thread = std::thread::Builder::new()
        .name("palaver-writer".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("writer runtime");
            let exit = runtime.block_on(writer_task.run(async {
                let _ = writer_stop.await;
            }));
            let _ = writer_exit_tx.send(exit);
        })?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (storage_failed_tx, mut storage_failed) = tokio::sync::oneshot::channel::<String>();
    let served = runtime.block_on(async {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no OS randomness: {e}"))?;
        let app = server::build_app(config, store, writer, Arc::new(SystemClock), seed).await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {} (PALAVER_LISTEN): {e}", config.listen))?;
        tracing::info!(address = %listener.local_addr()?, data_dir = %config.data_dir.display(), "palaver listening");
        let watch_writer = async move {
            if let Ok(WriterExit::Failed(error)) = writer_exit.await {
                let _ = storage_failed_tx.send(error);
            }
        };
        let shutdown = async move {
            tokio::select! {
                () = shutdown_signal() => {}
                () = watch_writer => tracing::error!("storage failed: stopping so that a restart can reopen and repair the database"),
            }
        };
        // Without TCP_NODELAY, Nagle's algorithm holds back a small frame (an ack, a
        // `new-message`) written while an earlier one is unacknowledged, until the client's
        // delayed ACK: p99 send-to-deliver latency sat at 40-48 ms for any load (BENCHMARKS.md).
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
            }
        });
        server::run(listener, app, config, shutdown).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    // Dropping the runtime drops every task still holding the service; then the writer commits
    // what is queued and exits, and the last handle to the database closes it cleanly.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    let _ = stop_writer.send(());
    writer_thread
        .join()
        .map_err(|_| "the storage writer panicked")?;
    served?;
    if let Ok(error) = storage_failed.try_recv() {
        return Err(format!(
            "storage failed ({error}); restart palaver to reopen and repair the database"
        )
        .into());
    }
    tracing::info!("database closed; bye");
    Ok(())
}

/// jemalloc, not glibc's malloc. Under glibc, the soak's 10,000 churning sockets grew RSS by
/// 6.6 MiB a minute (per-thread arenas fragmenting: 348 of 418 MiB were arena mappings; with
/// jemalloc, 2.6 MiB a minute), and argon2's 19 MiB blocks stayed resident once glibc raised
/// its mmap threshold (790 MB after 40 registrations) unless the threshold was pinned with
/// `mallopt`. jemalloc returns freed pages to the system on its own (docs/soak.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
