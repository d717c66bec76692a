//! The simulated network seen from both ends: the server's listener (an `axum::serve::Listener`
//! over turmoil's TCP) and the clients' REST calls (hyper over turmoil's TCP).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The server's host name and port on the simulated network.
pub const SERVER_HOST: &str = "server";
pub const SERVER_PORT: u16 = 3000;

/// The server's listening socket, as axum wants it.
pub struct SimListener(pub turmoil::net::TcpListener);

impl axum::serve::Listener for SimListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                // axum's own TCP listener backs off the same way on accept errors.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Opens a TCP connection to the server, or gives up after `timeout`.
pub async fn dial(timeout: Duration) -> io::Result<turmoil::net::TcpStream> {
    match tokio::time::timeout(
        timeout,
        turmoil::net::TcpStream::connect((SERVER_HOST, SERVER_PORT)),
    )
    .await
    {
        Ok(stream) => stream,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Why a REST call produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("connect: {0}")]
    Connect(#[from] io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("timed out")]
    TimedOut,
    #[error("answer is not JSON: {0}")]
    NotJson(String),
}

/// One REST call on a fresh connection: `method path` with an optional bearer token and JSON
/// body. Returns the status and the JSON answer.
pub async fn rest(
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(StatusCode, Value), RestError> {
    match tokio::time::timeout(timeout, rest_inner(method, path, token, body)).await {
        Ok(result) => result,
        Err(_) => Err(RestError::TimedOut),
    }
}

async fn rest_inner(
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(StatusCode, Value), RestError> {
    let stream = turmoil::net::TcpStream::connect((SERVER_HOST, SERVER_PORT)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, SERVER_HOST);
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let payload = match body {
        Some(body) => {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let request = request
        .body(Full::new(payload))
        .expect("a well-formed request");
    let answer = sender.send_request(request).await;
    let result = match answer {
        Ok(response) => {
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            let json = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .map_err(|_| RestError::NotJson(String::from_utf8_lossy(&bytes).into()))?
            };
            Ok((status, json))
        }
        Err(error) => Err(RestError::Http(error)),
    };
    driver.abort();
    result
}
