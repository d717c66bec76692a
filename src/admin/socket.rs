//! The admin socket: a Unix domain socket in the data directory (`admin.sock`, mode 0600) on
//! which a running server takes the operator's requests, one JSON line each, answered by one
//! line (see `protocol`). Only the server's user (and root) can connect: the socket is 0600 in a
//! 0700 directory. A socket file left by a server that died is replaced at the next start (the
//! database's lock means no other server can be using this data directory); a clean stop
//! removes it. Every line is bounded, connections are served at most `ADMIN_CONNECTIONS_MAX`
//! at once, and a connection that sends nothing for `ADMIN_REQUEST_TIMEOUT` is closed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use socketioxide::SocketIo;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::protocol::{Reply, Request, execute};
use crate::limits::{
    ADMIN_CONNECTIONS_MAX, ADMIN_REPLY_BYTES_MAX, ADMIN_REPLY_TIMEOUT, ADMIN_REQUEST_BYTES_MAX,
    ADMIN_REQUEST_TIMEOUT,
};
use crate::service::App;

/// Name of the admin socket inside the data directory.
pub const SOCKET_FILE: &str = "admin.sock";

/// The admin socket of the data directory `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// A bound admin socket, not yet served.
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// A served admin socket; [`AdminServer::stop`] ends it and removes its file.
pub struct AdminServer {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl AdminSocket {
    /// Binds `admin.sock` in `data_dir` (0600), replacing a stale one. Call it only while
    /// holding the data directory's database, which proves no other server uses the socket.
    pub fn bind(data_dir: &Path) -> std::io::Result<Self> {
        let path = path(data_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), "replaced the admin socket a stopped server left behind")
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener: UnixListener::from_std(listener)?,
            path,
        })
    }

    /// Serves requests on the caller's runtime until stopped.
    pub fn serve(self, app: Arc<App>, io: SocketIo) -> AdminServer {
        let path = self.path.clone();
        let task = tokio::spawn(accept_forever(self.listener, app, io));
        tracing::info!(path = %path.display(), "admin socket listening");
        AdminServer { task, path }
    }
}

impl AdminServer {
    pub fn stop(self) {
        self.task.abort();
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(%error, path = %self.path.display(), "could not remove the admin socket");
        }
    }
}

async fn accept_forever(listener: UnixListener, app: Arc<App>, io: SocketIo) {
    let slots = Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            let mut stream = stream;
            let _ = write_reply(&mut stream, &Reply::Error("Server busy".into())).await;
            continue;
        };
        let (app, io) = (Arc::clone(&app), io.clone());
        tokio::spawn(async move {
            serve_connection(stream, &app, &io).await;
            drop(slot);
        });
    }
}

async fn serve_connection(stream: UnixStream, app: &App, io: &SocketIo) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let line = tokio::time::timeout(
            ADMIN_REQUEST_TIMEOUT,
            read_line(&mut reader, ADMIN_REQUEST_BYTES_MAX),
        )
        .await;
        let reply = match line {
            Err(_) | Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                // The rest of an overlong line would read as another request.
                let _ = write_reply(&mut writer, &Reply::Error(error.to_string())).await;
                return;
            }
            Ok(Ok(Some(line))) => match serde_json::from_slice::<Request>(&line) {
                Ok(request) => {
                    tracing::info!(command = command_name(&request), "admin request");
                    execute(app, Some(io), request).await.into()
                }
                Err(error) => Reply::Error(format!("not a request: {error}")),
            },
        };
        if write_reply(&mut writer, &reply).await.is_err() {
            return;
        }
    }
}

/// The request's name for the log (its fields may hold a password).
fn command_name(request: &Request) -> &'static str {
    match request {
        Request::UserAdd { .. } => "user-add",
        Request::UserList { .. } => "user-list",
        Request::UserSetPassword { .. } => "user-set-password",
        Request::UserDisable { .. } => "user-disable",
        Request::UserEnable { .. } => "user-enable",
        Request::Token { .. } => "token",
        Request::Backup { .. } => "backup",
    }
}

async fn write_reply(
    writer: &mut (impl AsyncWriteExt + Unpin),
    reply: &Reply,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("a reply serialises");
    line.push(b'\n');
    writer.write_all(&line).await
}

/// One line without its newline, at most `max` bytes; `None` at the end of the stream.
async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(limit).read_until(b'\n', &mut line).await?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Some(line));
    }
    if line.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("line longer than {max} bytes"),
        ));
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the line was cut off",
    ))
}

/// Why a request could not be put to a running server.
#[derive(Debug)]
pub enum CallError {
    /// No server listens on the socket: the caller may open the database itself.
    NoServer,
    /// A server listens but the exchange failed.
    Failed(String),
}

/// Puts `request` to the server listening on `socket`, if one does.
pub async fn call(socket: &Path, request: &Request) -> Result<Reply, CallError> {
    let stream = match UnixStream::connect(socket).await {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(CallError::NoServer);
        }
        Err(error) => {
            return Err(CallError::Failed(format!(
                "cannot connect to the admin socket {}: {error} (run the command as the server's user, or root)",
                socket.display()
            )));
        }
    };
    let failed = |error: std::io::Error| {
        CallError::Failed(format!(
            "the server on {} did not answer: {error}",
            socket.display()
        ))
    };
    let (reader, mut writer) = stream.into_split();
    let mut line = serde_json::to_vec(request).expect("a request serialises");
    line.push(b'\n');
    writer.write_all(&line).await.map_err(failed)?;
    let mut reader = BufReader::new(reader);
    let answer = tokio::time::timeout(
        ADMIN_REPLY_TIMEOUT,
        read_line(&mut reader, ADMIN_REPLY_BYTES_MAX),
    )
    .await
    .map_err(|_| failed(std::io::ErrorKind::TimedOut.into()))?
    .map_err(failed)?
    .ok_or_else(|| failed(std::io::ErrorKind::UnexpectedEof.into()))?;
    serde_json::from_slice(&answer).map_err(|e| {
        CallError::Failed(format!(
            "the server on {} answered something else than a reply: {e}",
            socket.display()
        ))
    })
}
