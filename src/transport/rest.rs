//! The REST routes of the contract on axum.
//!
//! Every non-2xx answer is JSON `{ "message": … }`, including the ones axum would produce on its
//! own (bad JSON, oversized bodies, unknown routes), so clients have one error shape to handle.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::client_addr::ClientAddr;
use super::wire::{self, Keep};
use super::{Shared, payload};
use crate::domain::page::Anchor;
use crate::limits::REPLY_BYTES_MAX;
use crate::service::{ApiError, AuthFailure, Refusal};
use crate::storage::UserRecord;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/health", get(health))
        .route("/api/auth/register", post(register))
        .route("/api/auth/login", post(login))
        .route("/api/auth/callback", post(external_callback))
        .route("/api/auth/me", get(me))
        .route("/api/auth/logout", post(logout))
        .route("/api/users", get(users))
        .route("/api/chats", get(chats).post(create_group))
        .route("/api/chats/with/{participant_id}", post(open_chat))
        .route("/api/chats/{chat_id}", get(chat).patch(rename_group))
        .route(
            "/api/chats/{chat_id}/members",
            get(chat_members).post(add_members),
        )
        .route(
            "/api/chats/{chat_id}/members/{user_id}",
            delete(remove_member),
        )
        .route("/api/chats/{chat_id}/read", post(mark_read))
        .route(
            "/api/messages/chat/{chat_id}",
            get(history).post(post_message),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "Not found") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
        })
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

/// The error of a REST call, with its status.
pub struct RestError(StatusCode, String);

impl RestError {
    pub fn new(status: StatusCode, message: &str) -> Self {
        Self(status, message.into())
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

impl From<ApiError> for RestError {
    fn from(e: ApiError) -> Self {
        let status = match &e {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::InvalidCredentials => StatusCode::UNAUTHORIZED,
            ApiError::TooManyAttempts | ApiError::TooManyRegistrations => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::EmailTaken => StatusCode::CONFLICT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Refused(refusal) => refusal_status(*refusal),
            ApiError::Unavailable | ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        };
        RestError(status, e.to_string())
    }
}

impl From<Refusal> for RestError {
    fn from(r: Refusal) -> Self {
        ApiError::from(r).into()
    }
}

fn refusal_status(refusal: Refusal) -> StatusCode {
    match refusal {
        Refusal::ChatNotFound => StatusCode::NOT_FOUND,
        Refusal::RateLimited | Refusal::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        Refusal::SendFailed | Refusal::Unavailable | Refusal::Busy => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Refusal::InvalidPayload | Refusal::MessageEmpty | Refusal::MessageTooLong => {
            StatusCode::BAD_REQUEST
        }
    }
}

/// A JSON body: any content type, at most the body limit (413 beyond), a clear 400 otherwise.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = RestError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "Payload too large"
                } else {
                    "Invalid request body"
                };
                RestError(status, message.into())
            })?;
        let bytes = if bytes.is_empty() {
            axum::body::Bytes::from_static(b"{}")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            RestError(
                StatusCode::BAD_REQUEST,
                format!("Invalid request body: {e}"),
            )
        })
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The authenticated caller; 401 `Unauthorized` otherwise.
pub struct Caller(pub UserRecord);

impl FromRequestParts<Shared> for Caller {
    type Rejection = RestError;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| RestError::from(ApiError::Unauthorized))?;
        match shared.app.authenticate(token).await {
            Ok(user) => Ok(Caller(user)),
            Err(AuthFailure::Unavailable) => Err(ApiError::Unavailable.into()),
            Err(_) => Err(ApiError::Unauthorized.into()),
        }
    }
}

/// Query strings as plain strings, parsed by hand so a bad number is a clear 400.
type RawQuery = Query<HashMap<String, String>>;

/// The one path parameter of a route. One that is not valid percent-encoded UTF-8 is a JSON 400
/// like every other error (axum's own rejection is plain text); found by the `rest_bodies` fuzz
/// target.
pub struct Param(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Param {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::from_request_parts(parts, state)
            .await
            .map(|Path(param)| Param(param))
            .map_err(|r| RestError(r.status(), "Invalid URL".into()))
    }
}

/// The two path parameters of a member route: the chat and the user.
pub struct ChatAndUser(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for ChatAndUser {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|Path((chat, user))| ChatAndUser(chat, user))
            .map_err(|r| RestError(r.status(), "Invalid URL".into()))
    }
}

fn number(query: &HashMap<String, String>, key: &str) -> Result<Option<u64>, RestError> {
    match query.get(key).map(|v| v.trim()) {
        None | Some("") => Ok(None),
        Some(value) => value.parse().map(Some).map_err(|_| {
            RestError(
                StatusCode::BAD_REQUEST,
                format!("{key} must be a non-negative whole number"),
            )
        }),
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

#[derive(Deserialize)]
struct RegisterBody {
    name: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

async fn register(
    State(shared): State<Shared>,
    ClientAddr(client): ClientAddr,
    Body(body): Body<RegisterBody>,
) -> Result<Response, RestError> {
    let (name, email, password) = (
        body.name.unwrap_or_default(),
        body.email.unwrap_or_default(),
        body.password.unwrap_or_default(),
    );
    let (token, user) = shared
        .app
        .register(client, &name, &email, &password)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "user": user })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct LoginBody {
    email: Option<String>,
    password: Option<String>,
}

async fn login(
    State(shared): State<Shared>,
    ClientAddr(client): ClientAddr,
    Body(body): Body<LoginBody>,
) -> Result<Response, RestError> {
    let (token, user) = shared
        .app
        .login(
            client,
            &body.email.unwrap_or_default(),
            &body.password.unwrap_or_default(),
        )
        .await?;
    Ok(Json(json!({ "token": token, "user": user })).into_response())
}

async fn external_callback(
    State(shared): State<Shared>,
    parts: Parts,
) -> Result<Response, RestError> {
    let token = bearer(&parts).ok_or_else(|| RestError::from(ApiError::Unauthorized))?;
    Ok(Json(shared.app.external_callback(token).await?).into_response())
}

/// Ends every session of the caller: all their tokens are refused from now on and their
/// sockets are closed.
async fn logout(
    State(shared): State<Shared>,
    Caller(user): Caller,
) -> Result<StatusCode, RestError> {
    super::revoke_sessions(&shared.app, &shared.io, &user.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(Caller(user): Caller) -> Response {
    Json(crate::service::views::UserView::from(&user)).into_response()
}

async fn users(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Query(query): RawQuery,
) -> Result<Response, RestError> {
    let limit = number(&query, "limit")?;
    Ok(Json(
        shared
            .app
            .search_users(&user.id, query.get("q").map(String::as_str), limit)?,
    )
    .into_response())
}

async fn chats(State(shared): State<Shared>, Caller(user): Caller) -> Result<Response, RestError> {
    Ok(Json(shared.app.chats_of(&user.id)?).into_response())
}

async fn open_chat(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(participant_id): Param,
) -> Result<Response, RestError> {
    Ok(Json(shared.app.open_chat_with(&user.id, &participant_id).await?).into_response())
}

async fn history(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(chat_id): Param,
    Query(query): RawQuery,
) -> Result<Response, RestError> {
    let anchor = match (number(&query, "before")?, number(&query, "after")?) {
        (Some(before), _) => Anchor::Before(before),
        (None, Some(after)) => Anchor::After(after),
        (None, None) => Anchor::Newest,
    };
    let limit = number(&query, "limit")?;
    let mut page = shared.app.history(&user.id, &chat_id, anchor, limit)?;
    // A shorter page, never `hasMore`: the client pages on from the seqs it got.
    let keep = match anchor {
        Anchor::After(_) => Keep::Lowest,
        Anchor::Before(_) | Anchor::Newest => Keep::Highest,
    };
    wire::fit_to_bytes(&mut page, REPLY_BYTES_MAX, keep);
    Ok(Json(page).into_response())
}

#[derive(Deserialize)]
struct MessageBody {
    text: Option<serde_json::Value>,
    #[serde(rename = "clientMsgId")]
    client_msg_id: Option<serde_json::Value>,
}

async fn post_message(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(chat_id): Param,
    Body(body): Body<MessageBody>,
) -> Result<Response, RestError> {
    let command = payload::send_fields(&chat_id, body.text.as_ref(), body.client_msg_id.as_ref())?;
    let sent = shared.app.send(&user, command).await?;
    Ok((StatusCode::CREATED, Json(sent.message)).into_response())
}

#[derive(Deserialize)]
struct GroupBody {
    name: Option<String>,
    #[serde(rename = "memberIds")]
    member_ids: Option<Vec<String>>,
}

async fn create_group(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Body(body): Body<GroupBody>,
) -> Result<Response, RestError> {
    let name = body.name.unwrap_or_default();
    let members = body.member_ids.unwrap_or_default();
    let chat = shared.app.create_group(&user.id, &name, members).await?;
    Ok((StatusCode::CREATED, Json(chat)).into_response())
}

async fn chat(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(chat_id): Param,
) -> Result<Response, RestError> {
    Ok(Json(shared.app.chat_of(&user.id, &chat_id)?).into_response())
}

#[derive(Deserialize)]
struct RenameBody {
    name: Option<String>,
}

async fn rename_group(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(chat_id): Param,
    Body(body): Body<RenameBody>,
) -> Result<Response, RestError> {
    let name = body.name.unwrap_or_default();
    Ok(Json(shared.app.rename_group(&user.id, &chat_id, &name).await?).into_response())
}

async fn chat_members(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(chat_id): Param,
) -> Result<Response, RestError> {
    Ok(Json(shared.app.members_of_chat(&user.id, &chat_id)?).into_response())
}

#[derive(Deserialize)]
struct AddMembersBody {
    #[serde(rename = "userIds")]
    user_ids: Option<Vec<String>>,
}

async fn add_members(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(chat_id): Param,
    Body(body): Body<AddMembersBody>,
) -> Result<Response, RestError> {
    let ids = body.user_ids.unwrap_or_default();
    Ok(Json(shared.app.add_members(&user.id, &chat_id, ids).await?).into_response())
}

async fn remove_member(
    State(shared): State<Shared>,
    Caller(user): Caller,
    ChatAndUser(chat_id, member): ChatAndUser,
) -> Result<StatusCode, RestError> {
    shared
        .app
        .remove_member(&user.id, &chat_id, &member)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ReadBody {
    seq: Option<serde_json::Value>,
}

async fn mark_read(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(chat_id): Param,
    Body(body): Body<ReadBody>,
) -> Result<Response, RestError> {
    let seq = payload::read_seq(body.seq.as_ref()).map_err(|_| {
        RestError::new(
            StatusCode::BAD_REQUEST,
            "seq must be a non-negative whole number",
        )
    })?;
    let last_read_seq = shared.app.mark_read(&user.id, &chat_id, seq).await?;
    Ok(Json(json!({ "ok": true, "lastReadSeq": last_read_seq })).into_response())
}
