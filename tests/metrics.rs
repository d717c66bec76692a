//! `GET /metrics` on its own listener, scraped while real sockets send: the figures move, the
//! labels stay within their closed sets, and the API port serves no metrics.

mod common;

use std::time::Duration;

use common::{relaxed_config, start};
use futures_util::future::join_all;
use palaver::config::Config;
use serde_json::json;

/// One scrape of the metrics listener.
async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    Scrape(response.text().await.unwrap())
}

/// A scrape's text, read one series at a time.
struct Scrape(String);

impl Scrape {
    /// The value of the series `name` whose labels include every pair of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (series_name, series_labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let matches = series_name == name
                    && labels.iter().all(|(k, v)| {
                        series_labels
                            .split(',')
                            .any(|l| l == format!("{k}=\"{v}\""))
                    });
                matches.then(|| value.parse().expect("a number"))
            })
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", self.0))
    }
}

fn with_metrics() -> Config {
    Config {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..relaxed_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_during_traffic_show_the_figures_moving() {
    let server = start(with_metrics()).await;
    let metrics = server.metrics_addr().expect("a metrics listener");
    assert_ne!(metrics, server.addr);

    let before = scrape(metrics).await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        before.get("palaver_build_info", &[("version", version)]),
        1.0
    );
    assert_eq!(before.get("palaver_messages_total", &[]), 0.0);
    assert_eq!(
        before.get("palaver_refusals_total", &[("reason", "rate_limited")]),
        0.0
    );

    let (ada, ada_id) = server.register("ada").await;
    let (bob, bob_id) = server.register("bob").await;
    let chat = server.open_chat(&ada, &bob_id).await;
    let sender = server.connect(&ada).await;
    let _receiver = server.connect(&bob).await;

    // 300 sends from one socket, scraped three times while they go on.
    const SENDS: usize = 300;
    let sends = {
        let chat = chat.clone();
        async move {
            // In waves that fit a socket's queue of unhandled events (256), which refuses
            // the rest with `Server busy`.
            for wave in 0..3 {
                let acks = join_all((0..SENDS / 3).map(|i| {
                    sender.ack(
                        "send-message",
                        json!({ "chatId": chat, "text": format!("m{wave}-{i}") }),
                    )
                }))
                .await;
                assert!(acks.iter().all(|ack| ack["ok"] == true), "{acks:?}");
            }
            sender
        }
    };
    let scrapes = async {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(scrape(metrics).await.get("palaver_messages_total", &[]));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    };
    let (sender, during) = tokio::join!(sends, scrapes);
    assert!(during.windows(2).all(|w| w[0] <= w[1]), "{during:?}");

    // Refusals of each kind: a socket event, a REST message call, a handshake.
    let empty = sender
        .ack("send-message", json!({ "chatId": chat, "text": "" }))
        .await;
    assert_eq!(empty["ok"], false);
    let (status, _) = server
        .post(
            "/api/messages/chat/nochat",
            Some(&ada),
            json!({ "text": "x" }),
        )
        .await;
    assert_eq!(status, 404);
    server.connect_refused("not-a-token").await;
    let (status, _) = server.get("/nowhere", None).await;
    assert_eq!(status, 404);

    // Presence is announced on the next tick.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = scrape(metrics).await;
    assert_eq!(after.get("palaver_messages_total", &[]), SENDS as f64);
    assert!(after.get("palaver_commit_batch_size_count", &[]) >= 1.0);
    let batched = after.get("palaver_commit_batch_size_sum", &[]);
    assert!(batched >= SENDS as f64, "{batched}");
    assert!(after.get("palaver_commit_seconds_count", &[]) >= 1.0);
    assert!(after.get("palaver_commit_seconds_bucket", &[("le", "+Inf")]) >= 1.0);
    assert_eq!(after.get("palaver_fanout_seconds_count", &[]), SENDS as f64);
    assert_eq!(after.get("palaver_sockets", &[]), 2.0);
    assert_eq!(after.get("palaver_users_online", &[]), 2.0);
    assert!(after.get("palaver_connections", &[]) >= 2.0);
    for reason in ["message_empty", "chat_not_found", "handshake_unauthorized"] {
        assert_eq!(
            after.get("palaver_refusals_total", &[("reason", reason)]),
            1.0,
            "{reason}"
        );
    }
    let requests = |route: &str, status: &str| {
        after.get(
            "palaver_http_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("/api/auth/register", "201"), 2.0);
    assert_eq!(requests("/api/chats/with/{participant_id}", "200"), 1.0);
    assert_eq!(requests("/api/messages/chat/{chat_id}", "404"), 1.0);
    assert_eq!(requests("unmatched", "404"), 1.0);
    // Route templates, never raw paths: no id reaches a label.
    for id in [&ada_id, &bob_id, &chat] {
        assert!(!after.0.contains(id.as_str()), "{id} in a label");
    }

    // The API port serves no metrics.
    let (status, _) = server.get("/metrics", None).await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn without_a_metrics_listener_nothing_is_served() {
    let server = start(relaxed_config()).await;
    assert_eq!(server.metrics_addr(), None);
    server.stop().await;
}
