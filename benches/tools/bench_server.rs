//! bench-server: helpers for `benches/compare.sh`, never for production.
//!
//! `bench-server seed DIR MESSAGES` fills a data directory with users, 1:1 chats and MESSAGES
//! messages straight through the storage writer (fast: commits without fsync, then one clean
//! close makes them durable), for the cold-start measurement. `bench-server serve-none` runs
//! the palaver server exactly as `palaver serve` does (same settings from the environment), but
//! commits with `Durability::None`: the end-to-end price of fsync is the ratio of its
//! throughput to the real server's, under the same load generator. The real binary has no such
//! switch on purpose.

use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use palaver::config::{Config, ServeArgs};
use palaver::server::Server;
use palaver::storage::{Durability, NewMessage, NewUser};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Seed DIR with MESSAGES messages spread over 1,000 chats of 2,000 users.
    Seed {
        dir: std::path::PathBuf,
        messages: u64,
    },
    /// `palaver serve` with commits that do not wait for the disk.
    ServeNone(Box<ServeArgs>),
}

const CHATS: u64 = 1000;
/// Requests queued per commit while seeding (the writer's batch limit).
const SEED_BATCH: u64 = 512;

fn seed(dir: &std::path::Path, messages: u64) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    let service = rt.block_on(
        Server::builder(config)
            .durability(Durability::None)
            .seed([3; 32])
            .writer_on_callers_runtime()
            .build(),
    )?;
    let writer = &service.writer;
    let user = |i: u64| format!("seeduser{i:016}");
    rt.block_on(async {
        let mut chats = Vec::new();
        for c in 0..CHATS {
            for u in [2 * c, 2 * c + 1] {
                writer
                    .create_user(NewUser {
                        id: user(u),
                        name: format!("seed {u}"),
                        email: format!("seed-{u}@seed.test"),
                        avatar: String::new(),
                        password_hash: None,
                        external_id: None,
                        now_ms: 1_795_635_442_123,
                    })
                    .await?;
            }
            let chat = writer
                .get_or_create_chat(
                    format!("seedchat{c:016}"),
                    user(2 * c),
                    user(2 * c + 1),
                    1_795_635_442_123,
                )
                .await?;
            chats.push(chat.id);
        }
        let mut n = 0u64;
        while n < messages {
            let batch = (n..(n + SEED_BATCH).min(messages)).map(|i| {
                let c = i % CHATS;
                writer.append_message(NewMessage {
                    id: format!("seedmsg{i:017}"),
                    chat: chats[c as usize].clone(),
                    sender: user(2 * c + (i / CHATS) % 2),
                    text: format!("seeded message {i} {}", "x".repeat(64)),
                    client_msg_id: Some(format!("seed-{i}")),
                    now_ms: 1_795_635_442_123 + i,
                })
            });
            for outcome in tokio::task::unconstrained(futures_util::future::join_all(batch)).await {
                outcome?;
            }
            n = (n + SEED_BATCH).min(messages);
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    rt.block_on(service.close());
    // The last handle to the database is gone: redb closed it cleanly, which makes every
    // non-durable commit durable.
    Ok(())
}

fn serve_none(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::resolve(args)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // As in src/main.rs: no Nagle delay on small frames.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await?
            .tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
        let running = Server::builder(config)
            .durability(Durability::None)
            .start(listener)
            .await?;
        let stopper = running.stopper();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            stopper.stop();
        });
        running.exited().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Seed { dir, messages } => seed(&dir, messages),
        Command::ServeNone(args) => serve_none(*args),
    }
}
