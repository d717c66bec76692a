//! palaver-client: a small Socket.IO v5 / Engine.IO v4 client over WebSocket, for the load
//! generator (`palaver-load`, this crate's binary), palaver's integration tests and soak, and the
//! simulation. It is a crate of its own so that the server never links a WebSocket client.
//!
//! It speaks just what palaver's clients use: the handshake with `auth: { token }`, events in
//! both directions, acknowledgements, and answering the server's pings. It is generic over the
//! byte stream, so the same code runs over a real `TcpStream` and over the simulation's.
//! Incoming events wait in a bounded queue; a consumer that stops reading eventually stops the
//! reader, which is the backpressure a real slow client exerts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Events buffered for the consumer before the reader waits.
const EVENTS_QUEUED_MAX: usize = 4096;
/// Frames buffered towards the server before `emit` waits.
const OUTGOING_QUEUED_MAX: usize = 1024;
/// Bytes read from the socket at a time (see `websocket_config`).
const READ_BUFFER_BYTES: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("connection refused by the server: {0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection closed")]
    Closed,
    #[error("no acknowledgement within {0:?}")]
    AckTimeout(Duration),
}

/// An event the server sent: its name and its first argument, kept as JSON text until asked
/// for. The load generator reads one field of each message; building a `serde_json::Value` of
/// all of them cost it a fifth of its CPU (0.58 → 0.47 cores at 12k msg/s without, three
/// alternating runs; BENCHMARKS.md, finding 12).
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    data: Box<RawValue>,
}

impl Event {
    /// The first argument (`null` if there was none).
    pub fn data(&self) -> Value {
        value_of(&self.data)
    }

    /// The first argument as `T`, borrowing from the event where `T` can; `None` if it is not
    /// a `T`.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Option<T> {
        serde_json::from_str(self.data.get()).ok()
    }
}

/// JSON text as a `Value`; the text came through serde_json already, so it always parses.
fn value_of(json: &RawValue) -> Value {
    serde_json::from_str(json.get()).unwrap_or(Value::Null)
}

/// An acknowledgement's first argument, as JSON text (see [`Event`]).
pub type AckAnswer = Box<RawValue>;

type PendingAcks = Arc<Mutex<HashMap<u64, oneshot::Sender<AckAnswer>>>>;

/// The sending half of a connection. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    outgoing: mpsc::Sender<Message>,
    acks: PendingAcks,
    next_ack: Arc<AtomicU64>,
    /// The task that moves frames; aborting it drops the connection without a goodbye.
    pump: tokio::task::AbortHandle,
}

/// Connects over `stream` (already connected to the server) and performs the Engine.IO and
/// Socket.IO handshakes on namespace `/` with `auth: { token }`. `host` goes into the request.
pub async fn connect<S>(
    stream: S,
    host: &str,
    token: &str,
) -> Result<(Client, mpsc::Receiver<Event>), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let url = format!("ws://{host}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(websocket_config())).await?;
    // Engine.IO open packet: `0{"sid":…,"pingInterval":…}`.
    let silence_max = match next_text(&mut ws).await? {
        text if text.starts_with('0') => silence_allowed(&text[1..]),
        other => {
            return Err(ClientError::Protocol(format!(
                "expected the open packet, got {other:?}"
            )));
        }
    };
    ws.send(Message::text(format!("40{}", json!({ "token": token }))))
        .await?;
    loop {
        let text = next_text(&mut ws).await?;
        if text == "2" {
            ws.send(Message::text("3")).await?;
        } else if text.starts_with("40") {
            break;
        } else if let Some(error) = text.strip_prefix("44") {
            let message = serde_json::from_str::<Value>(error)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned));
            return Err(ClientError::Refused(
                message.unwrap_or_else(|| error.to_owned()),
            ));
        } else {
            return Err(ClientError::Protocol(format!(
                "unexpected packet during connect: {text:?}"
            )));
        }
    }
    let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_QUEUED_MAX);
    let (events_tx, events) = mpsc::channel(EVENTS_QUEUED_MAX);
    let acks: PendingAcks = Arc::default();
    let pump = tokio::spawn(pump(
        ws,
        outgoing_rx,
        outgoing.clone(),
        events_tx,
        Arc::clone(&acks),
        silence_max,
    ))
    .abort_handle();
    Ok((
        Client {
            outgoing,
            acks,
            next_ack: Arc::new(AtomicU64::new(1)),
            pump,
        },
        events,
    ))
}

/// How long the server may stay silent before the connection counts as dead: its ping interval
/// plus its ping timeout, from the open packet, as socket.io-client does. A connection whose
/// packets silently stopped arriving (a dead network path) is noticed this way.
fn silence_allowed(open: &str) -> Duration {
    let open = serde_json::from_str::<Value>(open).unwrap_or(Value::Null);
    let ms = |key: &str, default: u64| open.get(key).and_then(Value::as_u64).unwrap_or(default);
    Duration::from_millis(ms("pingInterval", 25_000) + ms("pingTimeout", 20_000))
}

/// tungstenite zero-fills its whole read buffer (128 KiB by default) before every read; with
/// thousands of sockets in one load generator that memset was 10% of its CPU. Frames here are
/// small, and a larger one just takes several reads.
fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES)
}

async fn next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Result<String, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await.ok_or(ClientError::Closed)?? {
            Message::Text(text) => return Ok(text.as_str().to_owned()),
            Message::Close(_) => return Err(ClientError::Closed),
            _ => {}
        }
    }
}

/// Moves frames between the WebSocket and the queues until either side closes.
async fn pump<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    mut outgoing: mpsc::Receiver<Message>,
    pong: mpsc::Sender<Message>,
    events: mpsc::Sender<Event>,
    acks: PendingAcks,
    silence_max: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let writer = async move {
        // Everything already queued goes out with one flush (one write to the socket), not one
        // each: a busy connection makes one system call for a burst instead of one per frame.
        'frames: while let Some(message) = outgoing.recv().await {
            let mut next = Some(message);
            while let Some(message) = next.take() {
                let closing = matches!(message, Message::Close(_));
                if sink.feed(message).await.is_err() || closing {
                    break 'frames;
                }
                next = outgoing.try_recv().ok();
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    };
    let reader = async move {
        while let Ok(Some(Ok(message))) = tokio::time::timeout(silence_max, stream.next()).await {
            let Message::Text(text) = message else {
                continue;
            };
            match parse_packet(text.as_str()) {
                Packet::Ping => {
                    if pong.send(Message::text("3")).await.is_err() {
                        break;
                    }
                }
                Packet::Event(event) => {
                    if events.send(event).await.is_err() {
                        // Nobody listens for events any more; keep serving acks.
                    }
                }
                Packet::Ack(id, data) => {
                    if let Some(waiter) = acks.lock().expect("never poisoned").remove(&id) {
                        let _ = waiter.send(data);
                    }
                }
                Packet::Disconnect => break,
                Packet::Other => {}
            }
        }
        // Dropping the pending acks wakes their waiters with `Closed`.
        acks.lock().expect("never poisoned").clear();
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
}

#[derive(Debug)]
enum Packet {
    Ping,
    Event(Event),
    Ack(u64, AckAnswer),
    Disconnect,
    Other,
}

/// Parses one Engine.IO text frame carrying a Socket.IO packet on namespace `/`.
fn parse_packet(text: &str) -> Packet {
    if text == "2" {
        return Packet::Ping;
    }
    if text == "1" || text.starts_with("41") {
        return Packet::Disconnect;
    }
    let (kind, rest) = match text.strip_prefix("42") {
        Some(rest) => ('e', rest),
        None => match text.strip_prefix("43") {
            Some(rest) => ('a', rest),
            None => return Packet::Other,
        },
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (id, body) = rest.split_at(digits);
    let Ok(args) = serde_json::from_str::<Vec<Box<RawValue>>>(body) else {
        return Packet::Other;
    };
    let mut args = args.into_iter();
    match kind {
        'e' => {
            let Some(Ok(name)) = args.next().map(|n| serde_json::from_str::<String>(n.get()))
            else {
                return Packet::Other;
            };
            let data = args.next().unwrap_or_else(null);
            Packet::Event(Event { name, data })
        }
        'a' => match id.parse() {
            Ok(id) => Packet::Ack(id, args.next().unwrap_or_else(null)),
            Err(_) => Packet::Other,
        },
        _ => Packet::Other,
    }
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

impl Client {
    /// Sends an event without asking for an acknowledgement.
    pub async fn emit(&self, event: &str, data: &Value) -> Result<(), ClientError> {
        let frame = format!("42{}", json!([event, data]));
        self.outgoing
            .send(Message::text(frame))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Sends an event and waits for its acknowledgement.
    pub async fn emit_with_ack(
        &self,
        event: &str,
        data: &Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        self.emit_expecting_ack(event, data)
            .await?
            .wait(timeout)
            .await
    }

    /// Sends an event that asks for an acknowledgement, without waiting for it: the caller
    /// awaits the returned [`PendingAck`] when it suits it. A load generator keeps sending on
    /// schedule this way instead of holding one task per message in flight.
    pub async fn emit_expecting_ack(
        &self,
        event: &str,
        data: &Value,
    ) -> Result<PendingAck, ClientError> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks.lock().expect("never poisoned").insert(id, tx);
        let frame = format!("42{id}{}", json!([event, data]));
        if self.outgoing.send(Message::text(frame)).await.is_err() {
            self.acks.lock().expect("never poisoned").remove(&id);
            return Err(ClientError::Closed);
        }
        Ok(PendingAck {
            id,
            answer: rx,
            acks: Arc::clone(&self.acks),
        })
    }

    /// Drops the connection at once, without a Socket.IO or WebSocket goodbye, as a killed tab
    /// does: the server learns of it from the closed TCP connection.
    pub fn abort(&self) {
        self.pump.abort();
    }

    /// True once the connection has ended, whichever side ended it.
    pub fn is_closed(&self) -> bool {
        self.outgoing.is_closed()
    }

    /// Closes the connection cleanly (Socket.IO disconnect, then a WebSocket close).
    pub async fn close(&self) {
        let _ = self.outgoing.send(Message::text("41")).await;
        let _ = self.outgoing.send(Message::Close(None)).await;
    }
}

/// An acknowledgement the server still owes (see [`Client::emit_expecting_ack`]).
pub struct PendingAck {
    id: u64,
    answer: oneshot::Receiver<AckAnswer>,
    acks: PendingAcks,
}

impl PendingAck {
    /// The acknowledgement's first argument, or an error if the connection closed or nothing
    /// came within `timeout`.
    pub async fn wait(self, timeout: Duration) -> Result<Value, ClientError> {
        let answer = self
            .finish(tokio::time::Instant::now() + timeout, timeout)
            .await?;
        Ok(value_of(&answer))
    }

    /// Like [`wait`](Self::wait), with an absolute deadline, and the answer as JSON text.
    pub async fn wait_until(
        self,
        deadline: tokio::time::Instant,
    ) -> Result<AckAnswer, ClientError> {
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.finish(deadline, timeout).await
    }

    async fn finish(
        self,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<AckAnswer, ClientError> {
        match tokio::time::timeout_at(deadline, self.answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                // Forget the waiter, so a late answer finds nothing and the map stays bounded.
                self.acks.lock().expect("never poisoned").remove(&self.id);
                Err(ClientError::AckTimeout(timeout))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packet in a form tests can compare: kind, name or ack id, and the data as a Value.
    fn shape(packet: Packet) -> (String, Value) {
        match packet {
            Packet::Ping => ("ping".into(), Value::Null),
            Packet::Event(event) => (format!("event {}", event.name), event.data()),
            Packet::Ack(id, answer) => (format!("ack {id}"), value_of(&answer)),
            Packet::Disconnect => ("disconnect".into(), Value::Null),
            Packet::Other => ("other".into(), Value::Null),
        }
    }

    #[test]
    fn parses_the_packets_palaver_sends() {
        let cases = [
            ("2", ("ping", Value::Null)),
            (
                r#"42["new-message",{"seq":1}]"#,
                ("event new-message", json!({"seq": 1})),
            ),
            (r#"42["online-users"]"#, ("event online-users", Value::Null)),
            (r#"4317[{"ok":true}]"#, ("ack 17", json!({"ok": true}))),
            ("41", ("disconnect", Value::Null)),
            ("42not json", ("other", Value::Null)),
            ("42[5]", ("other", Value::Null)),
            ("42[]", ("other", Value::Null)),
            ("43[1]", ("other", Value::Null)),
        ];
        for (frame, (kind, data)) in cases {
            assert_eq!(
                shape(parse_packet(frame)),
                (kind.to_owned(), data),
                "{frame}"
            );
        }
    }

    #[test]
    fn an_event_parses_its_data_into_a_borrowing_type() {
        #[derive(Deserialize)]
        struct Text<'a> {
            text: &'a str,
        }
        let Packet::Event(event) = parse_packet(r#"42["new-message",{"text":"hi","seq":2}]"#)
        else {
            panic!("an event");
        };
        assert_eq!(event.parse::<Text>().map(|t| t.text), Some("hi"));
        assert!(event.parse::<u64>().is_none());
    }
}
