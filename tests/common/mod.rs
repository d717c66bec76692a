//! Shared harness for the integration tests: a real palaver server on `127.0.0.1:0` with a
//! temporary data directory, and small REST and Socket.IO helpers.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use palaver::config::Config;
use palaver::server::{Running, Server, ServerExit};
use palaver_client::{self as client, Client, Event};
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    running: Running,
}

fn install_tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Send and registration limits high enough that only the tests of those limits meet them.
pub fn relaxed_config() -> Config {
    Config {
        send_rate_per_sec: 100_000,
        send_burst: 100_000,
        registrations_per_address: 100_000,
        ..Config::default()
    }
}

pub async fn start(config: Config) -> TestServer {
    start_in(config, tempfile::tempdir().expect("temp dir")).await
}

/// A server on an existing data directory (kept from an earlier server's `stop_keeping_data`).
pub async fn start_in(config: Config, dir: tempfile::TempDir) -> TestServer {
    install_tls_provider();
    let config = Config {
        data_dir: dir.path().to_owned(),
        ..config
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let running = Server::builder(config)
        .seed([7; 32])
        .start(listener)
        .await
        .expect("start server");
    TestServer { addr, dir, running }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Where `GET /metrics` is served, if the server was started with `metrics_listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running.metrics_addr()
    }

    /// Stops serving, then lets the writer commit what is queued; returns how the server ended.
    pub async fn stop(self) -> ServerExit {
        self.stop_keeping_data().await.0
    }

    /// Like `stop`, but hands back the data directory instead of deleting it.
    pub async fn stop_keeping_data(self) -> (ServerExit, tempfile::TempDir) {
        self.running.stop();
        (self.running.exited().await, self.dir)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = reqwest::Client::new().post(self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        answer(request.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = reqwest::Client::new().get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        answer(request.send().await.expect("request")).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = reqwest::Client::new().patch(self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        answer(request.send().await.expect("request")).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = reqwest::Client::new().delete(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        answer(request.send().await.expect("request")).await
    }

    /// The server's storage (consistency checks).
    pub fn store(&self) -> &palaver::storage::Store {
        self.running.store()
    }

    /// Registers a user; returns (token, user id).
    pub async fn register(&self, name: &str) -> (String, String) {
        let email = format!("{name}@example.com");
        let (status, body) = self
            .post(
                "/api/auth/register",
                None,
                json!({ "name": name, "email": email, "password": "password123" }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["token"].as_str().unwrap().to_owned(),
            body["user"]["_id"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn open_chat(&self, token: &str, other: &str) -> String {
        let (status, body) = self
            .post(&format!("/api/chats/with/{other}"), Some(token), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["_id"].as_str().unwrap().to_owned()
    }

    pub async fn connect(&self, token: &str) -> Socket {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("tcp connect");
        let (client, events) = client::connect(stream, &self.addr.to_string(), token)
            .await
            .expect("socket.io connect");
        Socket { client, events }
    }

    pub async fn connect_refused(&self, token: &str) -> String {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("tcp connect");
        match client::connect(stream, &self.addr.to_string(), token).await {
            Err(client::ClientError::Refused(message)) => message,
            Err(other) => panic!("expected a refusal, got {other}"),
            Ok(_) => panic!("expected a refusal, got a connection"),
        }
    }
}

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// A connected socket and the events it received.
pub struct Socket {
    pub client: Client,
    pub events: mpsc::Receiver<Event>,
}

impl Socket {
    pub async fn ack(&self, event: &str, data: Value) -> Value {
        self.client
            .emit_with_ack(event, &data, ACK_TIMEOUT)
            .await
            .expect("ack")
    }

    /// The next event named `name` within `within`, skipping others.
    pub async fn next(&mut self, name: &str, within: Duration) -> Option<Value> {
        tokio::time::timeout(within, async {
            loop {
                let event = self.events.recv().await?;
                if event.name == name {
                    return Some(event.data());
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Every event named `name` that arrives within `quiet`.
    pub async fn drain(&mut self, name: &str, quiet: Duration) -> Vec<Value> {
        let mut found = Vec::new();
        while let Some(data) = self.next(name, quiet).await {
            found.push(data);
        }
        found
    }
}
