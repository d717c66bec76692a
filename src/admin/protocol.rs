//! The admin protocol: the requests an operator's command makes and what they answer, and
//! [`execute`], which carries one out on the service. A running server executes what arrives
//! on its admin socket; a command that finds no server builds the service on the data
//! directory itself and executes the same request, so both paths give the same results.
//!
//! On the socket each request is one JSON line (`{"command": "user-disable", "email": …}`) and
//! each answer one line, `{"ok": …}` or `{"error": "…"}`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::SocketIo;

use crate::domain::time::rfc3339_ms;
use crate::limits::ADMIN_USERS_PAGE_MAX;
use crate::service::{ApiError, App};
use crate::storage::{Standing, UserRecord};

/// One operator request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    UserAdd {
        name: String,
        email: String,
        password: String,
    },
    /// A page of accounts after id `after`, in creation order.
    UserList {
        after: Option<String>,
        limit: usize,
    },
    UserSetPassword {
        email: String,
        password: String,
    },
    UserDisable {
        email: String,
    },
    UserEnable {
        email: String,
    },
    Token {
        email: String,
        ttl_secs: Option<u64>,
    },
    /// An absolute path, written by the server's process.
    Backup {
        path: PathBuf,
    },
}

/// One answer: what the request produced, or why it failed (a sentence for the operator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Ok(Value),
    Error(String),
}

impl From<Result<Value, String>> for Reply {
    fn from(result: Result<Value, String>) -> Self {
        match result {
            Ok(value) => Reply::Ok(value),
            Err(message) => Reply::Error(message),
        }
    }
}

impl From<Reply> for Result<Value, String> {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Ok(value) => Ok(value),
            Reply::Error(message) => Err(message),
        }
    }
}

/// Carries out `request`. `sessions` is the running server's Socket.IO handle, whose sockets of
/// a disabled user (or one given a new password) are closed; without a server there are none.
pub async fn execute(
    app: &App,
    sessions: Option<&SocketIo>,
    request: Request,
) -> Result<Value, String> {
    match request {
        Request::UserAdd {
            name,
            email,
            password,
        } => {
            let user = app
                .add_user(&name, &email, &password)
                .await
                .map_err(|e| e.to_string())?;
            Ok(account(&user, &Standing::default()))
        }
        Request::UserList { after, limit } => {
            let page = app
                .users_page(after.as_deref(), limit.clamp(1, ADMIN_USERS_PAGE_MAX))
                .map_err(|e| e.to_string())?;
            Ok(Value::Array(
                page.iter()
                    .map(|(user, standing)| account(user, standing))
                    .collect(),
            ))
        }
        Request::UserSetPassword { email, password } => {
            let (user, _) = find(app, &email)?;
            app.set_password(&user, &password)
                .await
                .map_err(|e| e.to_string())?;
            end_sessions(app, sessions, &user.id).await?;
            described(app, &email)
        }
        Request::UserDisable { email } => {
            let (user, _) = find(app, &email)?;
            app.set_disabled(&user.id, true)
                .await
                .map_err(|e| e.to_string())?;
            end_sessions(app, sessions, &user.id).await?;
            described(app, &email)
        }
        Request::UserEnable { email } => {
            let (user, _) = find(app, &email)?;
            app.set_disabled(&user.id, false)
                .await
                .map_err(|e| e.to_string())?;
            described(app, &email)
        }
        Request::Token { email, ttl_secs } => {
            let (user, standing) = find(app, &email)?;
            let ttl = ttl_secs.map(Duration::from_secs);
            let (token, expires_ms) =
                app.token_for(&user, &standing, ttl).map_err(|e| match e {
                    ApiError::AccountDisabled => format!("{email}: the account is disabled"),
                    other => other.to_string(),
                })?;
            Ok(json!({ "token": token, "expiresAt": rfc3339_ms(expires_ms) }))
        }
        Request::Backup { path } => {
            if !path.is_absolute() {
                return Err(format!("{}: the path must be absolute", path.display()));
            }
            let started = std::time::Instant::now();
            let summary = app
                .backup_to(path.clone())
                .await
                .map_err(|e| e.to_string())?;
            Ok(json!({
                "path": path,
                "bytes": summary.bytes,
                "rows": summary.rows,
                "seconds": started.elapsed().as_secs_f64(),
            }))
        }
    }
}

fn find(app: &App, email: &str) -> Result<(UserRecord, Standing), String> {
    app.user_by_email(email).map_err(|e| match e {
        ApiError::NotFound(_) => format!("no user with email {email:?}"),
        other => other.to_string(),
    })
}

fn described(app: &App, email: &str) -> Result<Value, String> {
    let (user, standing) = find(app, email)?;
    Ok(account(&user, &standing))
}

/// Refuses every token of `user` issued so far and, on a running server, closes their sockets.
async fn end_sessions(app: &App, sessions: Option<&SocketIo>, user: &str) -> Result<(), String> {
    let ended = match sessions {
        Some(io) => crate::transport::revoke_sessions(app, io, user).await,
        None => app.revoke_tokens(user).await,
    };
    ended.map_err(|e| e.to_string())
}

/// An account as the operator sees it (no password hash).
fn account(user: &UserRecord, standing: &Standing) -> Value {
    json!({
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "signIn": sign_in(user),
        "createdAt": rfc3339_ms(user.created_ms),
        "disabled": standing.disabled_ms.is_some(),
        "disabledAt": standing.disabled_ms.map(rfc3339_ms),
    })
}

/// How the account signs in: its password, the external provider, or not yet (imported without
/// its password hash, until `user set-password`).
fn sign_in(user: &UserRecord) -> &'static str {
    match (&user.password_hash, &user.external_id) {
        (_, Some(_)) => "external",
        (Some(_), None) => "password",
        (None, None) => "none",
    }
}
