//! The connection loop: accepts connections, refuses those past the caps at once, and serves
//! each with HTTP/1 under the timeouts that close connections that never speak.
//!
//! `axum::serve` sets no timer on hyper's connections, so a connection that sent nothing, or a
//! request head one line at a time, was held for ever, and enough of them used up the file
//! descriptors. Here every connection gets: a first-byte bound (a connection that sends nothing
//! at all is closed), hyper's `header_read_timeout` (a request head must arrive whole within
//! it; hyper re-arms it while a keep-alive connection waits for its next request, so it is also
//! the idle bound), and the caps: at most `per_address` connections from one client address and
//! at most `max` in all, the latter kept `FDS_RESERVED` below the open-files limit. Past a cap
//! the connection is accepted and closed at once, so `accept` never runs into `EMFILE` under a
//! flood; if it does all the same (descriptors used elsewhere), the `Listener` backs off (axum's
//! TCP listener sleeps a second on such errors) instead of spinning.
//!
//! A full server does not turn everyone away while connections that never spoke hold its
//! places: when the global cap is reached, the oldest connection that has not yet sent a whole
//! request head is closed to make room (at most `EVICTIONS_IN_FLIGHT_MAX` closing at once, so
//! descriptors stay within the reserve), and only when there is none is the newcomer refused.
//! Such connections cost an attacker nothing to open but are no user's session, so thousands
//! of them from many addresses delay a real client by nothing instead of by the first-byte
//! bound.
//!
//! At accept time only the TCP peer is known. A peer in the trusted proxies is exempt from the
//! per-address cap (every client behind it shares its address); the clients behind it are
//! told apart per request (`client_addr`), which is what the login throttle and the
//! registration limit use; capping their connections is left to the proxy.
//!
//! The Socket.IO handshake has its own bound (socketioxide's `connect_timeout`, set in
//! `server::router`). Shutdown is graceful as with `axum::serve`: stop accepting, let open
//! requests finish, wait for their connections to close; upgraded WebSockets are closed by the
//! Socket.IO layer itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

use crate::config::ConnectionSettings;
use crate::domain::address::address_key;
use crate::limits::{EVICTIONS_IN_FLIGHT_MAX, FDS_RESERVED};
use crate::metrics::Metrics;

/// Counts open connections, in all and per client address, and admits new ones within the caps.
pub struct ConnectionGate {
    per_address: u32,
    max: usize,
    trusted_proxies: Vec<IpNet>,
    open: Mutex<OpenConnections>,
    /// `palaver_connections`, and the refusals by reason.
    metrics: Metrics,
}

#[derive(Default)]
struct OpenConnections {
    total: usize,
    by_address: HashMap<IpAddr, u32>,
    /// Connections that have not sent a whole request head yet, oldest first (ids are handed
    /// out in admission order), each with the signal that closes it.
    unproven: BTreeMap<u64, Arc<Notify>>,
    /// Connections told to close to make room, until they have.
    evicted: HashSet<u64>,
    next_id: u64,
}

impl OpenConnections {
    /// Tells the oldest connection that never sent a request head to close; false if there is
    /// none, or too many are closing already.
    fn evict_oldest_unproven(&mut self) -> bool {
        if self.evicted.len() >= EVICTIONS_IN_FLIGHT_MAX {
            return false;
        }
        let Some((id, close)) = self.unproven.pop_first() else {
            return false;
        };
        close.notify_one();
        self.evicted.insert(id);
        true
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max` connections are open.
    ServerFull,
    /// `per_address` connections from this client address are open.
    AddressFull,
}

/// An admitted connection's place in the counts, given back when it is dropped.
pub struct Admission {
    gate: Arc<ConnectionGate>,
    /// The address it counts against; `None` for a trusted proxy.
    address: Option<IpAddr>,
    id: u64,
    /// Fires when the connection must close to make room (it never sent a request head).
    evict: Arc<Notify>,
    /// Set once it sent a whole request head: then it is never evicted.
    proven: AtomicBool,
}

impl ConnectionGate {
    pub fn new(settings: &ConnectionSettings, max: usize, metrics: Metrics) -> Self {
        Self {
            per_address: settings.per_address,
            max,
            trusted_proxies: settings.trusted_proxies.clone(),
            open: Mutex::new(OpenConnections::default()),
            metrics,
        }
    }

    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admission, Refused> {
        let trusted = is_trusted(&self.trusted_proxies, peer);
        let mut open = self.open.lock().expect("never poisoned");
        let address = (!trusted).then(|| address_key(peer));
        if let Some(address) = address
            && open.by_address.get(&address).copied().unwrap_or(0) >= self.per_address
        {
            self.metrics.refused("connections_address_full");
            return Err(Refused::AddressFull);
        }
        // Past the cap by the connections still closing, which `EVICTIONS_IN_FLIGHT_MAX` bounds.
        if open.total >= self.max + open.evicted.len() && !open.evict_oldest_unproven() {
            self.metrics.refused("connections_server_full");
            return Err(Refused::ServerFull);
        }
        if let Some(address) = address {
            *open.by_address.entry(address).or_default() += 1;
        }
        open.total += 1;
        self.metrics.connection_opened();
        let id = open.next_id;
        open.next_id += 1;
        let evict = Arc::new(Notify::new());
        open.unproven.insert(id, Arc::clone(&evict));
        Ok(Admission {
            gate: Arc::clone(self),
            address,
            id,
            evict,
            proven: AtomicBool::new(false),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("never poisoned").total
    }
}

impl Admission {
    /// The connection sent a whole request head: it is a client's, and keeps its place.
    pub fn prove(&self) {
        if !self.proven.swap(true, Ordering::Relaxed) {
            let mut open = self.gate.open.lock().expect("never poisoned");
            open.unproven.remove(&self.id);
        }
    }

    /// Resolves when the connection must close to make room for a newer one.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().expect("never poisoned");
        open.total -= 1;
        open.unproven.remove(&self.id);
        open.evicted.remove(&self.id);
        self.gate.metrics.connection_closed();
        if let Some(address) = self.address
            && let Some(count) = open.by_address.get_mut(&address)
        {
            *count -= 1;
            if *count == 0 {
                open.by_address.remove(&address);
            }
        }
    }
}

pub fn is_trusted(trusted_proxies: &[IpNet], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    trusted_proxies.iter().any(|net| net.contains(&peer))
}

/// The process's open-files limit (soft RLIMIT_NOFILE), if it has one.
pub fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the limit into the struct we own and reads nothing else.
        let status = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        (status == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raises the soft open-files limit to the hard one (a server's connections each hold a
/// descriptor, and many systems start processes at a soft limit of 1,024); returns the soft
/// limit in force afterwards.
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in `open_files_limit`; setrlimit reads the struct we own.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                    tracing::warn!(
                        soft = limit.rlim_cur,
                        hard = limit.rlim_max,
                        "cannot raise the open-files limit"
                    );
                }
            }
        }
    }
    open_files_limit()
}

/// The global connection cap: the configured one, or `FDS_RESERVED` below the open-files limit
/// if that is lower (at least one connection).
pub fn connection_cap(configured: u32, open_files: Option<u64>) -> usize {
    let configured = configured as usize;
    match open_files {
        Some(limit) => {
            let below_limit = limit.saturating_sub(FDS_RESERVED).max(1);
            configured.min(usize::try_from(below_limit).unwrap_or(usize::MAX))
        }
        None => configured,
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets open
/// requests finish and waits for their connections to close.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    settings: &ConnectionSettings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: Listener,
    L::Addr: Into<SocketAddr>,
{
    let open_files = open_files_limit();
    let max = connection_cap(settings.max, open_files);
    tracing::info!(
        max_connections = max,
        open_files_limit = ?open_files,
        per_address = settings.per_address,
        trusted_proxies = settings.trusted_proxies.len(),
        "connection caps"
    );
    let gate = Arc::new(ConnectionGate::new(settings, max, metrics));
    let timeouts = Timeouts {
        first_byte: settings.first_byte_timeout,
        request_head: settings.request_head_timeout,
    };
    // Dropping `stop_tx` tells the connections to shut down; each holds a `closed_rx`, so
    // `closed_tx.closed()` resolves when the last one has closed.
    let (stop_tx, stop_rx) = watch::channel(());
    let (closed_tx, closed_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut refusals = RefusalLog::default();
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let peer: SocketAddr = peer.into();
        match gate.admit(peer.ip()) {
            Ok(admission) => {
                let admission = Arc::new(admission);
                let connection = Connection {
                    io: WatchedIo::new(io, Arc::clone(&admission)),
                    admission,
                    peer,
                    router: router.clone(),
                    timeouts,
                };
                tokio::spawn(connection.serve(stop_rx.clone(), closed_rx.clone()));
            }
            // Dropping `io` closes the connection.
            Err(refused) => refusals.note(peer, refused),
        }
    }
    drop(listener);
    drop(stop_rx);
    drop(stop_tx);
    drop(closed_rx);
    closed_tx.closed().await;
}

/// Refusals are logged at debug level each, and as a warning at most once a minute with their
/// count, so an operator sees the caps being hit without a flood of log lines.
#[derive(Default)]
struct RefusalLog {
    since_warning: u64,
    last_warning: Option<tokio::time::Instant>,
}

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(60);

    fn note(&mut self, peer: SocketAddr, refused: Refused) {
        tracing::debug!(%peer, ?refused, "connection refused");
        self.since_warning += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= Self::EVERY)
        {
            tracing::warn!(
                refused = self.since_warning,
                last_peer = %peer,
                last_reason = ?refused,
                "connections refused past the connection caps"
            );
            self.since_warning = 0;
            self.last_warning = Some(now);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    first_byte: Duration,
    request_head: Duration,
}

struct Connection<I> {
    io: WatchedIo<I>,
    admission: Arc<Admission>,
    peer: SocketAddr,
    router: Router,
    timeouts: Timeouts,
}

impl<I> Connection<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn serve(self, mut stop: watch::Receiver<()>, _closed: watch::Receiver<()>) {
        let peer = self.peer;
        let spoke = Arc::clone(&self.io.spoke);
        let admission = Arc::clone(&self.admission);
        let service = self
            .router
            .map_request(move |mut request: hyper::Request<Incoming>| {
                admission.prove();
                request.extensions_mut().insert(ConnectInfo(peer));
                request.map(axum::body::Body::new)
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.timeouts.request_head);
        let connection = builder
            .serve_connection(TokioIo::new(self.io), TowerToHyperService::new(service))
            .with_upgrades();
        let mut connection = pin!(connection);
        let mut first_byte_deadline = pin!(tokio::time::sleep(self.timeouts.first_byte));
        let mut first_byte_checked = false;
        let mut stopping = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%peer, %error, "connection ended");
                    }
                    return;
                }
                () = &mut first_byte_deadline, if !first_byte_checked => {
                    if !spoke.load(Ordering::Relaxed) {
                        tracing::debug!(%peer, "connection closed: no byte within the first-byte timeout");
                        return;
                    }
                    first_byte_checked = true;
                }
                () = self.admission.evicted() => {
                    tracing::debug!(%peer, "connection closed to make room: no request head yet");
                    return;
                }
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A connection's byte stream, noting whether the client has sent anything, and holding the
/// connection's place in the caps for as long as the stream lives (an upgraded WebSocket keeps
/// it after hyper lets go).
struct WatchedIo<I> {
    inner: I,
    spoke: Arc<AtomicBool>,
    _admission: Arc<Admission>,
}

impl<I> WatchedIo<I> {
    fn new(inner: I, admission: Arc<Admission>) -> Self {
        Self {
            inner,
            spoke: Arc::new(AtomicBool::new(false)),
            _admission: admission,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.spoke.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(per_address: u32, max: usize, trusted: &[&str]) -> Arc<ConnectionGate> {
        let settings = ConnectionSettings {
            per_address,
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            ..ConnectionSettings::default()
        };
        Arc::new(ConnectionGate::new(&settings, max, Metrics::disabled()))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn caps_per_address_and_in_all_and_gives_places_back() {
        let gate = gate(2, 3, &[]);
        let a1 = proven(gate.admit(ip("192.0.2.1")));
        let _a2 = proven(gate.admit(ip("192.0.2.1")));
        assert_eq!(
            gate.admit(ip("192.0.2.1")).err(),
            Some(Refused::AddressFull)
        );
        let _b1 = proven(gate.admit(ip("192.0.2.2")));
        assert_eq!(gate.admit(ip("192.0.2.3")).err(), Some(Refused::ServerFull));
        drop(a1);
        assert_eq!(gate.open(), 2);
        assert!(gate.admit(ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn a_full_server_closes_its_oldest_connection_without_a_request_head() {
        let gate = gate(10, 3, &[]);
        let oldest = gate.admit(ip("192.0.2.1")).unwrap();
        let talker = gate.admit(ip("192.0.2.2")).unwrap();
        talker.prove();
        let younger = gate.admit(ip("192.0.2.3")).unwrap();
        let newcomer = gate.admit(ip("192.0.2.4")).expect("room made");
        assert!(fired(&oldest), "the oldest unproven one is told to close");
        assert!(!fired(&talker) && !fired(&younger) && !fired(&newcomer));
        drop(oldest);
        assert_eq!(gate.open(), 3);
        younger.prove();
        newcomer.prove();
        assert_eq!(gate.admit(ip("192.0.2.5")).err(), Some(Refused::ServerFull));
    }

    #[test]
    fn evictions_closing_at_once_are_bounded() {
        let max = EVICTIONS_IN_FLIGHT_MAX * 2;
        let gate = gate(u32::MAX, max, &[]);
        let held: Vec<_> = (0..max)
            .map(|_| gate.admit(ip("192.0.2.1")).unwrap())
            .collect();
        let newcomers: Vec<_> = (0..EVICTIONS_IN_FLIGHT_MAX)
            .map(|_| gate.admit(ip("192.0.2.2")).expect("room made"))
            .collect();
        assert_eq!(gate.admit(ip("192.0.2.2")).err(), Some(Refused::ServerFull));
        assert_eq!(
            held.iter().filter(|a| fired(a)).count(),
            EVICTIONS_IN_FLIGHT_MAX
        );
        drop(held);
        assert_eq!(gate.open(), newcomers.len());
        assert!(gate.open.lock().unwrap().evicted.is_empty());
    }

    /// An admitted connection that sent its request head.
    fn proven(admitted: Result<Admission, Refused>) -> Admission {
        let admission = admitted.expect("admitted");
        admission.prove();
        admission
    }

    /// Whether the admission was told to close (the signal's stored permit, taken if there).
    fn fired(admission: &Admission) -> bool {
        use std::future::Future;
        let mut evicted = std::pin::pin!(admission.evicted());
        let waker = std::task::Waker::noop();
        let fired = evicted
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_ready();
        if fired {
            admission.evict.notify_one();
        }
        fired
    }

    #[test]
    fn trusted_proxies_are_exempt_from_the_per_address_cap_only() {
        let gate = gate(1, 3, &["10.0.0.0/8"]);
        let held: Vec<_> = (0..3).map(|_| proven(gate.admit(ip("10.1.2.3")))).collect();
        assert_eq!(gate.admit(ip("10.1.2.3")).err(), Some(Refused::ServerFull));
        drop(held);
        assert!(gate.open.lock().unwrap().by_address.is_empty());
    }

    #[test]
    fn ipv6_clients_share_a_cap_per_64() {
        let gate = gate(1, 10, &[]);
        let _first = gate.admit(ip("2001:db8::1")).unwrap();
        assert_eq!(
            gate.admit(ip("2001:db8::2")).err(),
            Some(Refused::AddressFull)
        );
        assert!(gate.admit(ip("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn the_cap_stays_below_the_open_files_limit() {
        assert_eq!(connection_cap(1_000_000, Some(20_000)), 20_000 - 64);
        assert_eq!(connection_cap(100, Some(20_000)), 100);
        assert_eq!(connection_cap(100, Some(10)), 1);
        assert_eq!(connection_cap(100, None), 100);
    }
}
