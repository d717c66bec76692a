//! Wiring: builds the service from its parts and serves HTTP and Socket.IO on any listener.
//!
//! `run` is generic over `axum::serve::Listener`, so the binary serves a TCP socket and the
//! simulation serves its simulated network with the very same code. Nothing here reads the wall
//! clock or the OS's randomness: the caller passes the clock and the seed.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::serve::Listener;
use socketioxide::SocketIo;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::ids::IdMinter;
use crate::limits::{BODY_BYTES_MAX, SOCKET_BUFFER_MAX, WS_READ_BUFFER_BYTES};
use crate::service::auth::{AuthSetupError, Tokens};
use crate::service::{App, Policy};
use crate::storage::{Store, StoreWriter, WriteError};
use crate::transport::{Shared, request_head, rest, socket, web};

/// Meta key of the generated token secret.
const JWT_SECRET_KEY: &str = "jwt_secret";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error("storing the generated token secret failed: {0}")]
    Secret(WriteError),
}

/// Builds the service: resolves the token secret (configured, or generated once and kept in the
/// database), loads the external provider's keys, and seeds the id generator.
pub async fn build_app(
    config: &Config,
    store: Store,
    writer: StoreWriter,
    clock: Arc<dyn Clock>,
    seed: [u8; 32],
) -> Result<Arc<App>, StartError> {
    let mut ids = IdMinter::from_seed(seed);
    let secret = match &config.jwt_secret {
        Some(secret) => secret.as_bytes().to_vec(),
        None => writer
            .init_meta(JWT_SECRET_KEY, ids.bytes::<32>().to_vec())
            .await
            .map_err(StartError::Secret)?,
    };
    let tokens = Tokens::new(&secret, config.token_ttl, config.external_auth.as_ref())?;
    if let Err(error) = tokens.refresh_external_keys(clock.now_ms()).await {
        tracing::warn!(%error, "external provider keys not loaded yet; retrying when a token needs them");
    }
    Ok(Arc::new(App::new(
        store,
        writer,
        clock,
        ids,
        tokens,
        Policy::from(config),
    )))
}

/// The whole HTTP surface: REST routes and Socket.IO, behind CORS and the body limit.
pub fn router(app: Arc<App>, config: &Config) -> (Router, SocketIo) {
    let (io_layer, io) = SocketIo::builder()
        .req_path("/socket.io")
        .ping_interval(Duration::from_secs(25))
        .ping_timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(10))
        .max_buffer_size(SOCKET_BUFFER_MAX)
        .max_payload(BODY_BYTES_MAX as u64)
        .ws_max_message_size(BODY_BYTES_MAX)
        .ws_max_frame_size(BODY_BYTES_MAX)
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        .with_state(Arc::clone(&app))
        .build_layer();
    let shared = Shared {
        app,
        io: io.clone(),
    };
    socket::register(&io);
    let router = rest::routes()
        .with_state(shared)
        .merge(web::routes(config.web))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(io_layer)
        // Outside socketioxide's layer, so it sees the handshake before socketioxide keeps it.
        .layer(axum::middleware::map_request(
            request_head::detach_socket_io_head,
        ))
        .layer(cors(&config.cors_origins));
    (router, io)
}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .allow_credentials(true)
}

/// Serves until `shutdown` completes, then disconnects every socket and waits for the open
/// HTTP requests to finish.
pub async fn run<L>(
    listener: L,
    app: Arc<App>,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: std::fmt::Debug,
{
    let (router, io) = router(Arc::clone(&app), config);
    let sweeper = tokio::spawn(sweep_presence_forever(io.clone(), app));
    let closing = async move {
        shutdown.await;
        tracing::info!("shutting down: closing sockets");
        sweeper.abort();
        io.close().await;
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(closing)
        .await
}

/// How often presence is reconciled with the live sockets (see `socket::sweep_presence`).
const PRESENCE_SWEEP_EVERY: Duration = Duration::from_secs(30);

async fn sweep_presence_forever(io: SocketIo, app: Arc<App>) {
    let mut suspects = std::collections::HashSet::new();
    let mut ticks = tokio::time::interval(PRESENCE_SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        socket::sweep_presence(&io, &app, &mut suspects).await;
    }
}
