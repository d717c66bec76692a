//! What an operator scrapes: the server's figures in Prometheus's text format, served at
//! `GET /metrics` on a listener of its own (`--metrics-listen`, off by default, so it is never
//! public by accident).
//!
//! Each server has a recorder of its own (metrics-exporter-prometheus's `PrometheusRecorder`,
//! never installed as the process's global recorder), so the many servers a test process
//! starts each count their own. The handles are registered once, here, and handed to the code
//! that counts: on the socket send path that is an atomic add per commit batch and one histogram
//! sample per delivered message (a lock-free push), never a registry lookup. Without a metrics
//! listener every handle is a no-op and nothing is kept.
//!
//! Label values come from closed sets: refusal reasons are the names below, and an HTTP
//! request's `route` is its matched route template (`/api/messages/chat/{chat_id}`), never the
//! raw path, or `unmatched`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::service::{App, AuthFailure, Refusal};

const CONNECTIONS: &str = "palaver_connections";
const SOCKETS: &str = "palaver_sockets";
const USERS_ONLINE: &str = "palaver_users_online";
const MESSAGES: &str = "palaver_messages_total";
const REFUSALS: &str = "palaver_refusals_total";
const COMMIT_BATCH_SIZE: &str = "palaver_commit_batch_size";
const COMMIT_SECONDS: &str = "palaver_commit_seconds";
const FANOUT_SECONDS: &str = "palaver_fanout_seconds";
const HTTP_REQUESTS: &str = "palaver_http_requests_total";
const BUILD_INFO: &str = "palaver_build_info";
const PROCESS_RESIDENT: &str = "palaver_process_resident_bytes";
const HEAP_ALLOCATED: &str = "palaver_heap_allocated_bytes";
const HEAP_RESIDENT: &str = "palaver_heap_resident_bytes";
const HEAP_RETAINED: &str = "palaver_heap_retained_bytes";

/// The allocator's own figures, read at each scrape. They tell live memory (`allocated`)
/// from what the allocator keeps mapped for it (`resident`, `retained`): a process whose RSS
/// grows while `allocated` stays flat is fragmenting, not leaking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapFigures {
    /// Bytes the program holds in live allocations.
    pub allocated: u64,
    /// Bytes of the allocator's pages in memory: live ones, its metadata and freed pages it
    /// has not returned yet.
    pub resident: u64,
    /// Bytes of address space the allocator keeps for reuse without holding memory.
    pub retained: u64,
}

/// Reads the allocator's figures; `None` when they cannot be read.
pub type HeapProbe = fn() -> Option<HeapFigures>;

/// The probe of the process's global allocator, installed once by the binary (the library
/// does not choose the allocator; tests and embedders run without one).
static HEAP_PROBE: std::sync::OnceLock<HeapProbe> = std::sync::OnceLock::new();

/// Installs the probe of the global allocator; a second call is ignored.
pub fn set_heap_probe(probe: HeapProbe) {
    let _ = HEAP_PROBE.set(probe);
}

/// Requests taken in one commit; batches hold at most `WRITE_BATCH_MAX`.
const BATCH_SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// A commit is one fsync: tens of microseconds on a fast SSD, tens of milliseconds on a disk.
const COMMIT_SECONDS_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Handing one message to every socket's queue: microseconds, unless sockets are many.
const FANOUT_SECONDS_BUCKETS: [f64; 11] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1,
];

/// Every `reason` of `palaver_refusals_total`, registered up front so a scrape shows each at 0.
pub const REFUSAL_REASONS: [&str; 17] = [
    // A socket event or a REST message route refused (`Refusal`).
    "chat_not_found",
    "invalid_payload",
    "message_empty",
    "message_too_long",
    "rate_limited",
    "send_failed",
    "unavailable",
    "busy",
    "too_many_requests",
    // REST: the login throttle and the registration window.
    "too_many_attempts",
    "too_many_registrations",
    // A Socket.IO handshake refused (`AuthFailure`).
    "handshake_unauthorized",
    "handshake_user_not_found",
    "handshake_unavailable",
    "too_many_sockets",
    // A connection closed at once by the connection caps.
    "connections_server_full",
    "connections_address_full",
];

/// The `reason` label of a refused socket event or REST message call.
pub fn refusal_reason(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::ChatNotFound => "chat_not_found",
        Refusal::InvalidPayload => "invalid_payload",
        Refusal::MessageEmpty => "message_empty",
        Refusal::MessageTooLong => "message_too_long",
        Refusal::RateLimited => "rate_limited",
        Refusal::SendFailed => "send_failed",
        Refusal::Unavailable => "unavailable",
        Refusal::Busy => "busy",
        Refusal::TooManyRequests => "too_many_requests",
    }
}

/// The `reason` label of a refused Socket.IO handshake.
pub fn handshake_refusal_reason(failure: AuthFailure) -> &'static str {
    match failure {
        AuthFailure::Unauthorized => "handshake_unauthorized",
        AuthFailure::UserNotFound => "handshake_user_not_found",
        AuthFailure::Unavailable => "handshake_unavailable",
        AuthFailure::TooManySockets => "too_many_sockets",
    }
}

/// A response's refusal, for the HTTP middleware to count (set by `rest::RestError`).
#[derive(Debug, Clone, Copy)]
pub struct RefusedAs(pub &'static str);

/// The server's metric handles. Cheap to clone; every clone counts into the same recorder.
#[derive(Clone)]
pub struct Metrics {
    connections: Gauge,
    messages: Counter,
    commit_batch_size: Histogram,
    commit_seconds: Histogram,
    fanout_seconds: Histogram,
    exporter: Option<Arc<Exporter>>,
}

/// The recorder behind enabled metrics, and what is registered on the fly.
struct Exporter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    sockets: Gauge,
    users_online: Gauge,
    process_resident: Gauge,
    heap: [Gauge; 3],
    refusals: HashMap<&'static str, Counter>,
}

impl Metrics {
    /// Handles that count nothing: the server without a metrics listener.
    pub fn disabled() -> Self {
        Self {
            connections: Gauge::noop(),
            messages: Counter::noop(),
            commit_batch_size: Histogram::noop(),
            commit_seconds: Histogram::noop(),
            fanout_seconds: Histogram::noop(),
            exporter: None,
        }
    }

    /// A recorder of this server's own, with every metric registered and described.
    pub fn prometheus() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(COMMIT_BATCH_SIZE.into()), &BATCH_SIZE_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(COMMIT_SECONDS.into()),
                    &COMMIT_SECONDS_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(FANOUT_SECONDS.into()),
                    &FANOUT_SECONDS_BUCKETS,
                )
            })
            .expect("the bucket lists are constant and not empty")
            .build_recorder();
        describe(&recorder);
        let metadata = metadata();
        let counter =
            |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &metadata);
        let gauge =
            |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &metadata);
        let histogram = |name: &'static str| {
            recorder.register_histogram(&Key::from_static_name(name), &metadata)
        };
        let refusals = REFUSAL_REASONS
            .into_iter()
            .map(|reason| {
                let key = Key::from_parts(REFUSALS, vec![Label::new("reason", reason)]);
                (reason, recorder.register_counter(&key, &metadata))
            })
            .collect();
        let build_info = Key::from_parts(
            BUILD_INFO,
            vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
        );
        recorder.register_gauge(&build_info, &metadata).set(1.0);
        let metrics = Self {
            connections: gauge(CONNECTIONS),
            messages: counter(MESSAGES),
            commit_batch_size: histogram(COMMIT_BATCH_SIZE),
            commit_seconds: histogram(COMMIT_SECONDS),
            fanout_seconds: histogram(FANOUT_SECONDS),
            exporter: None,
        };
        let exporter = Exporter {
            handle: recorder.handle(),
            sockets: gauge(SOCKETS),
            users_online: gauge(USERS_ONLINE),
            process_resident: gauge(PROCESS_RESIDENT),
            heap: [
                gauge(HEAP_ALLOCATED),
                gauge(HEAP_RESIDENT),
                gauge(HEAP_RETAINED),
            ],
            refusals,
            recorder,
        };
        Self {
            exporter: Some(Arc::new(exporter)),
            ..metrics
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.exporter.is_some()
    }

    /// A connection was admitted (`+1`) or closed (`-1`).
    pub fn connection_opened(&self) {
        self.connections.increment(1.0);
    }

    pub fn connection_closed(&self) {
        self.connections.decrement(1.0);
    }

    /// One committed batch: the requests it took, how long it took, the messages it appended.
    pub fn committed(&self, requests: usize, started: Instant, messages: usize) {
        self.commit_seconds.record(started.elapsed().as_secs_f64());
        self.commit_batch_size.record(requests as f64);
        self.messages.increment(messages as u64);
    }

    /// One message handed to its sockets, since `started`.
    pub fn fanned_out(&self, started: Instant) {
        self.fanout_seconds.record(started.elapsed().as_secs_f64());
    }

    /// Counts one refusal under `reason` (one of [`REFUSAL_REASONS`]).
    pub fn refused(&self, reason: &'static str) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        match exporter.refusals.get(reason) {
            Some(counter) => counter.increment(1),
            None => {
                let key = Key::from_parts(REFUSALS, vec![Label::new("reason", reason)]);
                exporter
                    .recorder
                    .register_counter(&key, &metadata())
                    .increment(1);
            }
        }
    }

    /// Counts one answered HTTP request of `route` (a route template, or `unmatched`).
    pub fn http_request(&self, route: &str, status: u16) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        let key = Key::from_parts(
            HTTP_REQUESTS,
            vec![
                Label::new("route", route.to_owned()),
                Label::new("status", status.to_string()),
            ],
        );
        exporter
            .recorder
            .register_counter(&key, &metadata())
            .increment(1);
    }

    /// Moves the histograms' recent samples into their buckets, so they stay bounded between
    /// scrapes (called every `METRICS_UPKEEP_EVERY` while the metrics listener runs).
    pub fn upkeep(&self) {
        if let Some(exporter) = &self.exporter {
            exporter.handle.run_upkeep();
        }
    }

    /// The text a scrape gets, with the presence figures read now.
    pub async fn render(&self, app: &App) -> String {
        let Some(exporter) = &self.exporter else {
            return String::new();
        };
        {
            let presence = app.presence().await;
            let state = presence.state();
            exporter.sockets.set(state.connection_count() as f64);
            exporter.users_online.set(state.online_count() as f64);
        }
        exporter.read_memory();
        exporter.handle.render()
    }
}

impl Exporter {
    /// Sets the memory gauges from the kernel's and the allocator's figures of this moment.
    fn read_memory(&self) {
        if let Some(bytes) = process_resident_bytes() {
            self.process_resident.set(bytes as f64);
        }
        if let Some(figures) = HEAP_PROBE.get().and_then(|probe| probe()) {
            let [allocated, resident, retained] = &self.heap;
            allocated.set(figures.allocated as f64);
            resident.set(figures.resident as f64);
            retained.set(figures.retained as f64);
        }
    }
}

/// The process's resident set (RSS), from `/proc/self/statm` where there is one.
fn process_resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

#[cfg(unix)]
fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(not(unix))]
fn page_size() -> u64 {
    4096
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
}

fn describe(recorder: &PrometheusRecorder) {
    let descriptions: [(&'static str, Option<Unit>, &'static str); 14] = [
        (
            CONNECTIONS,
            None,
            "Open connections (TCP), as counted against the connection caps.",
        ),
        (SOCKETS, None, "Authenticated Socket.IO connections."),
        (USERS_ONLINE, None, "Users announced online."),
        (MESSAGES, None, "Messages committed."),
        (
            REFUSALS,
            None,
            "Requests, events, handshakes and connections refused, by reason.",
        ),
        (
            COMMIT_BATCH_SIZE,
            None,
            "Write requests committed together in one transaction.",
        ),
        (
            COMMIT_SECONDS,
            Some(Unit::Seconds),
            "Time to apply and commit (fsync) one batch.",
        ),
        (
            FANOUT_SECONDS,
            Some(Unit::Seconds),
            "Time to hand one committed message to its sockets.",
        ),
        (
            HTTP_REQUESTS,
            None,
            "HTTP requests answered, by matched route and status.",
        ),
        (
            BUILD_INFO,
            None,
            "Always 1; the version of the running binary.",
        ),
        (
            PROCESS_RESIDENT,
            Some(Unit::Bytes),
            "The process's resident memory (RSS), as the kernel counts it.",
        ),
        (
            HEAP_ALLOCATED,
            Some(Unit::Bytes),
            "Bytes in live allocations (jemalloc's stats.allocated).",
        ),
        (
            HEAP_RESIDENT,
            Some(Unit::Bytes),
            "Bytes of the allocator's pages in memory, freed ones not yet returned included \
             (jemalloc's stats.resident).",
        ),
        (
            HEAP_RETAINED,
            Some(Unit::Bytes),
            "Address space the allocator keeps for reuse, holding no memory \
             (jemalloc's stats.retained).",
        ),
    ];
    for (name, unit, text) in descriptions {
        let name = KeyName::from_const_str(name);
        match name.as_str() {
            n if n == COMMIT_BATCH_SIZE || n == COMMIT_SECONDS || n == FANOUT_SECONDS => {
                recorder.describe_histogram(name, unit, text.into());
            }
            n if n == MESSAGES || n == REFUSALS || n == HTTP_REQUESTS => {
                recorder.describe_counter(name, unit, text.into());
            }
            _ => recorder.describe_gauge(name, unit, text.into()),
        }
    }
}

/// Counts every answered request of `router` under its matched route, and the refusals its
/// responses carry.
pub fn count_requests<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    metrics: Metrics,
) -> Router<S> {
    if !metrics.is_enabled() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(metrics, count_request))
}

async fn count_request(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let response = next.run(request).await;
    metrics.http_request(
        route.as_deref().unwrap_or("unmatched"),
        response.status().as_u16(),
    );
    if let Some(RefusedAs(reason)) = response.extensions().get::<RefusedAs>() {
        metrics.refused(reason);
    }
    response
}

/// The metrics listener's routes: `GET /metrics`, and 404 for anything else.
pub fn routes(app: Arc<App>) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(app)
}

async fn scrape(State(app): State<Arc<App>>) -> Response {
    let text = app.metrics().render(&app).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_counted_is_registered_up_front() {
        let refusals = [
            Refusal::ChatNotFound,
            Refusal::InvalidPayload,
            Refusal::MessageEmpty,
            Refusal::MessageTooLong,
            Refusal::RateLimited,
            Refusal::SendFailed,
            Refusal::Unavailable,
            Refusal::Busy,
            Refusal::TooManyRequests,
        ];
        let failures = [
            AuthFailure::Unauthorized,
            AuthFailure::UserNotFound,
            AuthFailure::Unavailable,
            AuthFailure::TooManySockets,
        ];
        let counted = refusals
            .into_iter()
            .map(refusal_reason)
            .chain(failures.into_iter().map(handshake_refusal_reason));
        for reason in counted {
            assert!(REFUSAL_REASONS.contains(&reason), "{reason}");
        }
    }

    #[test]
    fn a_prometheus_recorder_renders_what_was_counted() {
        let metrics = Metrics::prometheus();
        metrics.committed(3, Instant::now(), 2);
        metrics.refused("rate_limited");
        metrics.http_request("/api/chats", 200);
        metrics.upkeep();
        let text = metrics.exporter.as_ref().unwrap().handle.render();
        for line in [
            "palaver_messages_total 2",
            "palaver_refusals_total{reason=\"rate_limited\"} 1",
            "palaver_refusals_total{reason=\"busy\"} 0",
            "palaver_http_requests_total{route=\"/api/chats\",status=\"200\"} 1",
            "palaver_commit_batch_size_sum 3",
            "palaver_commit_batch_size_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(!Metrics::disabled().is_enabled());
    }

    #[test]
    fn a_scrape_reads_the_memory_figures_of_this_moment() {
        fn probe() -> Option<HeapFigures> {
            Some(HeapFigures {
                allocated: 3 << 20,
                resident: 5 << 20,
                retained: 7 << 20,
            })
        }
        set_heap_probe(probe);
        let metrics = Metrics::prometheus();
        let exporter = metrics.exporter.as_ref().unwrap();
        exporter.read_memory();
        let text = exporter.handle.render();
        for line in [
            "palaver_heap_allocated_bytes 3145728",
            "palaver_heap_resident_bytes 5242880",
            "palaver_heap_retained_bytes 7340032",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        if cfg!(target_os = "linux") {
            let rss = text
                .lines()
                .find_map(|l| l.strip_prefix("palaver_process_resident_bytes "))
                .and_then(|v| v.parse::<f64>().ok());
            assert!(rss.is_some_and(|bytes| bytes > 1e6), "no RSS in\n{text}");
        }
    }
}
