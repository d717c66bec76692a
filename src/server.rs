//! Wiring: the one way to start palaver, from a database to a served port.
//!
//! [`Server::builder`] takes the settings and, optionally, the parts a caller wants to choose
//! (the database and its disk, durability, clock, id seed, where the writer runs), and either
//! [`start`](ServerBuilder::start)s serving HTTP and Socket.IO on any `axum::serve::Listener`
//! (a TCP socket for the binary and the tests, the simulated network for the simulation;
//! `transport::connections` serves it and closes connections that never speak) or
//! [`build`](ServerBuilder::build)s the service alone (fuzzing, benchmarks, the crash test).
//! Adding a table, a background task or a start-up step therefore touches this file only.
//! Nothing here reads the wall clock or the OS's randomness unless the caller leaves the clock
//! or the seed to their defaults.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::serve::Listener;
use redb::Database;
use socketioxide::{ParserConfig, SocketIo};
use tokio::sync::{Notify, oneshot};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::admin::socket::{AdminServer, AdminSocket};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::domain::ids::IdMinter;
use crate::limits::*;
use crate::metrics::{self, Metrics};
use crate::service::auth::{AuthSetupError, Tokens};
use crate::service::{App, Policy};
use crate::storage::{
    self, CommitFeed, CommitSubscriber, Durability, Store, StoreError, StoreWriter, WriterExit,
    WriterTask,
};
use crate::transport::{Shared, connections, deliver, request_head, rest, socket, web};

/// Meta key of the generated token secret.
const JWT_SECRET_KEY: &str = "jwt_secret";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error("no OS randomness to seed ids and secrets: {0}")]
    Entropy(String),
    #[error("cannot start the storage writer's thread: {0}")]
    WriterThread(std::io::Error),
    #[error("cannot listen on the admin socket in {dir}: {source}")]
    AdminSocket { dir: String, source: std::io::Error },
    #[error("cannot listen for metrics on {0} (PALAVER_METRICS_LISTEN): {1}")]
    MetricsListen(std::net::SocketAddr, std::io::Error),
}

/// How a served server ended.
#[derive(Debug)]
pub enum ServerExit {
    /// Asked to stop; everything handed to the writer was committed.
    Stopped,
    /// A commit failed: restart to reopen (and repair) the database.
    StorageFailed(StoreError),
    /// Serving the listener failed.
    Io(std::io::Error),
}

/// Where the storage writer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterPlace {
    /// A thread of its own: its blocking fsyncs never stall the async workers (the binary).
    OwnThread,
    /// A task of the caller's runtime: for runtimes that must see every task (the simulation's
    /// hosts, the fuzz targets' single thread).
    CallersRuntime,
}

pub struct Server;

impl Server {
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
            database: None,
            durability: Durability::Immediate,
            clock: Arc::new(SystemClock),
            seed: None,
            writer: WriterPlace::OwnThread,
            on_shutdown: None,
        }
    }
}

pub struct ServerBuilder {
    config: Config,
    database: Option<Database>,
    durability: Durability,
    clock: Arc<dyn Clock>,
    seed: Option<[u8; 32]>,
    writer: WriterPlace,
    on_shutdown: Option<ShutdownHook>,
}

/// Called once when a served server begins to shut down (asked to, or after a storage failure).
type ShutdownHook = Box<dyn FnOnce() + Send>;

impl ServerBuilder {
    /// Calls `hook` once, when the server begins to shut down (before it closes the sockets).
    pub fn on_shutdown(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.on_shutdown = Some(Box::new(hook));
        self
    }

    /// An opened database (any redb backend); by default `palaver.redb` in the data directory.
    pub fn database(mut self, database: Database) -> Self {
        self.database = Some(database);
        self
    }

    /// `Immediate` (the default) is the only setting that keeps the contract's promise.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The id generator's seed; by default from the OS.
    pub fn seed(mut self, seed: [u8; 32]) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Runs the writer as a task of the caller's runtime instead of on a thread of its own.
    pub fn writer_on_callers_runtime(mut self) -> Self {
        self.writer = WriterPlace::CallersRuntime;
        self
    }

    /// The service alone, with its writer running, not served.
    pub async fn build(self) -> Result<Service, StartError> {
        let (mut service, writer) = self.assemble(None).await?;
        service.writer_handle = Some(writer);
        Ok(service)
    }

    /// Serves HTTP and Socket.IO on `listener` until [`Running::stopper`] is used or storage
    /// fails. Returns once storage is open and the service built; serving goes on in a task.
    pub async fn start<L>(mut self, listener: L) -> Result<Running, StartError>
    where
        L: Listener,
        L::Addr: Into<std::net::SocketAddr>,
    {
        let config = self.config.clone();
        let on_shutdown = self.on_shutdown.take();
        // A server on its data directory's database takes the operator's commands there; one on
        // a database handed to it (tests, the simulation) has no directory of its own.
        let owns_data_dir = self.database.is_none();
        let (metrics_listener, metrics_addr) = match config.metrics_listen {
            Some(address) => {
                let failed = |e| StartError::MetricsListen(address, e);
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .map_err(failed)?;
                let bound = listener.local_addr().map_err(failed)?;
                (Some(listener), Some(bound))
            }
            None => (None, None),
        };
        let (feed, subscribers) = CommitFeed::new(COMMIT_FEED_SHARDS, COMMIT_FEED_QUEUE_MAX);
        let (service, writer) = self.assemble(Some(feed)).await?;
        // Bound only once the database is open: holding it proves no other server uses the
        // directory, so a socket found there is stale.
        let admin = owns_data_dir
            .then(|| AdminSocket::bind(&config.data_dir))
            .transpose()
            .map_err(|source| StartError::AdminSocket {
                dir: config.data_dir.display().to_string(),
                source,
            })?;
        let stop = Arc::new(Notify::new());
        let served = tokio::spawn(serve(
            listener,
            Arc::clone(&service.app),
            config,
            subscribers,
            writer,
            OperatorListeners {
                metrics: metrics_listener,
                admin,
            },
            Shutdown {
                asked: Arc::clone(&stop),
                hook: on_shutdown,
            },
        ));
        Ok(Running {
            service,
            stop,
            served,
            metrics_addr,
        })
    }

    /// Opens storage, starts the writer, and builds the service.
    async fn assemble(
        self,
        feed: Option<CommitFeed>,
    ) -> Result<(Service, WriterHandle), StartError> {
        let database = match self.database {
            Some(database) => database,
            None => {
                storage::open_dir_with_cache(&self.config.data_dir, self.config.db_cache_bytes)?
            }
        };
        let metrics = match self.config.metrics_listen {
            Some(_) => Metrics::prometheus(),
            None => Metrics::disabled(),
        };
        let (store, writer, task) = storage::start(database, self.durability)?;
        let task = task.with_metrics(metrics.clone());
        let task = match feed {
            Some(feed) => task.with_feed(feed),
            None => task,
        };
        let handle = WriterHandle::spawn(task, self.writer)?;
        let seed = match self.seed {
            Some(seed) => seed,
            None => os_seed()?,
        };
        let app = build_app(
            &self.config,
            Storage {
                store: store.clone(),
                writer: writer.clone(),
            },
            self.clock,
            seed,
            metrics,
        )
        .await?;
        let service = Service {
            app,
            store,
            writer,
            writer_handle: None,
        };
        Ok((service, handle))
    }
}

fn os_seed() -> Result<[u8; 32], StartError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| StartError::Entropy(e.to_string()))?;
    Ok(seed)
}

/// The service and its storage, built but not served. Its writer runs while it is kept (for a
/// served one, while it serves) and stops, committing what it was handed, when it is dropped.
pub struct Service {
    pub app: Arc<App>,
    pub store: Store,
    pub writer: StoreWriter,
    writer_handle: Option<WriterHandle>,
}

impl Service {
    /// Stops the writer once it has committed everything handed to it, and waits for it; the
    /// database closes when the last handle to it (this service's) is dropped.
    pub async fn close(mut self) -> Option<WriterExit> {
        let writer = self.writer_handle.take()?;
        let _ = writer.stop.send(());
        writer.exit.await.ok()
    }
}

/// A server being served.
pub struct Running {
    service: Service,
    stop: Arc<Notify>,
    served: tokio::task::JoinHandle<ServerExit>,
    metrics_addr: Option<std::net::SocketAddr>,
}

/// Asks a running server to stop (cheap to clone, usable from anywhere).
#[derive(Clone)]
pub struct Stopper(Arc<Notify>);

impl Stopper {
    pub fn stop(&self) {
        self.0.notify_one();
    }
}

impl Running {
    pub fn app(&self) -> &Arc<App> {
        &self.service.app
    }

    pub fn store(&self) -> &Store {
        &self.service.store
    }

    /// Where `GET /metrics` is served, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.stop))
    }

    /// Asks the server to stop: it stops accepting, closes every socket, lets open requests
    /// finish, and has the writer commit what was handed to it.
    pub fn stop(&self) {
        self.stopper().stop();
    }

    /// Waits until the server has stopped (asked to, or because storage failed) and its writer
    /// has ended.
    pub async fn exited(self) -> ServerExit {
        self.served.await.unwrap_or_else(|error| {
            ServerExit::Io(std::io::Error::other(format!(
                "the server task failed: {error}"
            )))
        })
    }
}

/// The storage writer, wherever it runs: how to stop it and how it ended.
struct WriterHandle {
    stop: oneshot::Sender<()>,
    exit: oneshot::Receiver<WriterExit>,
}

impl WriterHandle {
    fn spawn(task: WriterTask, place: WriterPlace) -> Result<Self, StartError> {
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (exit_tx, exit) = oneshot::channel::<WriterExit>();
        let run = async move {
            let ended = task
                .run(async {
                    let _ = stop_rx.await;
                })
                .await;
            let _ = exit_tx.send(ended);
        };
        match place {
            WriterPlace::CallersRuntime => {
                tokio::spawn(run);
            }
            WriterPlace::OwnThread => {
                std::thread::Builder::new()
                    .name("palaver-writer".into())
                    .spawn(move || {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("writer runtime")
                            .block_on(run);
                    })
                    .map_err(StartError::WriterThread)?;
            }
        }
        Ok(Self { stop, exit })
    }
}

/// Builds the service: resolves the token secret (configured, or generated once and kept in the
/// database), loads the external provider's keys, and seeds the id generator.
async fn build_app(
    config: &Config,
    Storage { store, writer }: Storage,
    clock: Arc<dyn Clock>,
    seed: [u8; 32],
    metrics: Metrics,
) -> Result<Arc<App>, StartError> {
    let mut ids = IdMinter::from_seed(seed);
    let secret = match &config.jwt_secret {
        Some(secret) => secret.as_bytes().to_vec(),
        None => {
            writer
                .init_meta(JWT_SECRET_KEY, ids.bytes::<32>().to_vec())
                .await?
        }
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
        metrics,
    )))
}

/// The storage handles the service is built on.
struct Storage {
    store: Store,
    writer: StoreWriter,
}

/// The whole HTTP surface: REST routes and Socket.IO, behind CORS and the body limit.
pub fn router(app: Arc<App>, config: &Config) -> (Router, SocketIo) {
    let (io_layer, io) = SocketIo::builder()
        .req_path("/socket.io")
        .ping_interval(PING_INTERVAL)
        .ping_timeout(PING_TIMEOUT)
        .connect_timeout(config.connections.socket_io_connect_timeout)
        .max_buffer_size(SOCKET_BUFFER_MAX)
        .max_payload(BODY_BYTES_MAX as u64)
        .ws_max_message_size(BODY_BYTES_MAX)
        .ws_max_frame_size(BODY_BYTES_MAX)
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        .with_parser(
            ParserConfig::common()
                .max_incoming_binaries(BINARY_ATTACHMENTS_MAX)
                .max_incoming_binary_buf_size(BINARY_ATTACHMENT_BYTES_MAX)
                .packet_completion_timeout(BINARY_PACKET_COMPLETION),
        )
        .with_state(Arc::clone(&app))
        .build_layer();
    let app_metrics = app.metrics().clone();
    let shared = Shared {
        app,
        io: io.clone(),
        trusted_proxies: config.connections.trusted_proxies.clone().into(),
    };
    socket::register(&io);
    let router = rest::routes()
        .with_state(shared)
        .merge(web::routes(config.web));
    let router = metrics::count_requests(router, app_metrics)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(io_layer)
        // Outside socketioxide's layer, so it sees the handshake before socketioxide keeps it.
        .layer(axum::middleware::map_request(
            request_head::detach_socket_io_head,
        ))
        .layer(cors(&config.cors_origins));
    (router, io)
}

/// Tokens travel in the `Authorization` header, never in cookies, so credentialed cross-origin
/// requests (cookies, TLS client certificates) are not allowed.
fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
}

/// What ends serving, and whom to tell.
struct Shutdown {
    asked: Arc<Notify>,
    hook: Option<ShutdownHook>,
}

/// The operator's listeners beside the API's: `/metrics` (when configured) and the admin socket
/// (when the server opened its data directory itself).
struct OperatorListeners {
    metrics: Option<tokio::net::TcpListener>,
    admin: Option<AdminSocket>,
}

/// Serves until asked to stop or until storage fails, then disconnects every socket, waits for
/// the open HTTP requests, and stops the writer.
async fn serve<L>(
    listener: L,
    app: Arc<App>,
    config: Config,
    committed: Vec<CommitSubscriber>,
    writer: WriterHandle,
    operator: OperatorListeners,
    shutdown: Shutdown,
) -> ServerExit
where
    L: Listener,
    L::Addr: Into<std::net::SocketAddr>,
{
    let (router, io) = router(Arc::clone(&app), &config);
    let admin: Option<AdminServer> = operator
        .admin
        .map(|admin| admin.serve(Arc::clone(&app), io.clone()));
    let metrics = app.metrics().clone();
    for shard in committed {
        tokio::spawn(deliver(io.clone(), Arc::clone(&app), shard));
    }
    let key_reloader = app
        .tokens()
        .reloads_external_keys()
        .then(|| tokio::spawn(reload_external_keys_forever(Arc::clone(&app))));
    let sweeper = tokio::spawn(sweep_presence_forever(io.clone(), Arc::clone(&app)));
    let metrics_stop = Arc::new(Notify::new());
    let metrics_server = operator.metrics.map(|listener| {
        tokio::spawn(serve_metrics(
            listener,
            Arc::clone(&app),
            Arc::clone(&metrics_stop),
        ))
    });
    let presence_ticker = tokio::spawn(tick_presence_forever(io.clone(), app));
    let WriterHandle {
        stop: stop_writer,
        exit: writer_exit,
    } = writer;
    // The shutdown future must be Send and 'static (axum spawns it), so a storage failure
    // travels back through a channel.
    let (failed_tx, failed) = oneshot::channel::<StoreError>();
    let closing = async move {
        let mut writer_exit = writer_exit;
        // The writer's end, unless it already ended (and said how) while serving.
        let still_running = tokio::select! {
            () = shutdown.asked.notified() => Some(writer_exit),
            exit = &mut writer_exit => {
                if let Ok(WriterExit::Failed(error)) = exit {
                    tracing::error!(%error, "storage failed: stopping so that a restart can reopen and repair the database");
                    let _ = failed_tx.send(error);
                }
                None
            }
        };
        if let Some(hook) = shutdown.hook {
            hook();
        }
        tracing::info!("shutting down: closing sockets");
        if let Some(admin) = admin {
            admin.stop();
        }
        sweeper.abort();
        presence_ticker.abort();
        if let Some(reloader) = key_reloader {
            reloader.abort();
        }
        metrics_stop.notify_one();
        io.close().await;
        still_running
    };
    let (writer_exit_tx, writer_exit_rx) = oneshot::channel();
    let closing = async move {
        let writer_exit = closing.await;
        let _ = writer_exit_tx.send(writer_exit);
    };
    connections::serve(listener, router, &config.connections, metrics, closing).await;
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    let _ = stop_writer.send(());
    if let Ok(Some(writer_exit)) = writer_exit_rx.await {
        let _ = writer_exit.await;
    }
    match failed.await {
        Ok(error) => ServerExit::StorageFailed(error),
        Err(_) => ServerExit::Stopped,
    }
}

/// Serves `GET /metrics` on its own listener until `stop` is notified, and keeps the
/// histograms' recent samples moved into their buckets meanwhile.
async fn serve_metrics(listener: tokio::net::TcpListener, app: Arc<App>, stop: Arc<Notify>) {
    match listener.local_addr() {
        Ok(address) => tracing::info!(%address, "metrics served at /metrics"),
        Err(error) => tracing::warn!(%error, "metrics listener has no address"),
    }
    let metrics = app.metrics().clone();
    let upkeep = async move {
        let mut ticks = tokio::time::interval(METRICS_UPKEEP_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            metrics.upkeep();
        }
    };
    let serving = axum::serve(listener, metrics::routes(app))
        .with_graceful_shutdown(async move { stop.notified().await });
    tokio::select! {
        served = serving.into_future() => {
            if let Err(error) = served {
                tracing::error!(%error, "metrics listener failed");
            }
        }
        () = upkeep => {}
    }
}

/// Announces presence changes every tick; without a tick (each change announced at once), it
/// still ends grace periods, a little after each ends.
async fn tick_presence_forever(io: SocketIo, app: Arc<App>) {
    let every = match app.presence_tick() {
        tick if tick.is_zero() => PRESENCE_GRACE_POLL,
        tick => tick,
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        socket::tick_presence(&io, &app).await;
    }
}

async fn reload_external_keys_forever(app: Arc<App>) {
    app.tokens()
        .reload_external_keys_every(JWKS_RELOAD_EVERY, || app.now_ms())
        .await;
}

async fn sweep_presence_forever(io: SocketIo, app: Arc<App>) {
    let mut suspects = std::collections::HashSet::new();
    let mut ticks = tokio::time::interval(PRESENCE_SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        socket::sweep_presence(&io, &app, &mut suspects).await;
    }
}
