//! The REST routes of the contract on axum, and their OpenAPI 3.1 description.
//!
//! Every non-2xx answer is JSON `{ "message": … }`, including the ones axum would produce on its
//! own (bad JSON, oversized bodies, unknown routes), so clients have one error shape to handle.
//!
//! The router and the document are built together (utoipa-axum): each handler carries a
//! `#[utoipa::path]` annotation and joins the router through `routes!`, which puts its
//! annotation into the document served at `GET /api/openapi.json`. A route added with plain
//! `.route()` would be served undocumented; tests/openapi.rs fails on that.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::client_addr::ClientAddr;
use super::wire::{self, Keep};
use super::{Shared, payload, socket};
use crate::domain::page::Anchor;
use crate::limits::REPLY_BYTES_MAX;
use crate::metrics::{RefusedAs, refusal_reason};
use crate::service::views::{ChatView, MemberView, MessageView, PublicUser, UserView};
use crate::service::{ApiError, AuthFailure, Refusal};
use crate::storage::UserRecord;

/// Every REST route, each with its annotation (see the module's description).
fn api() -> OpenApiRouter<Shared> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(external_callback))
        .routes(routes!(me))
        .routes(routes!(logout))
        .routes(routes!(users))
        .routes(routes!(chats, create_group))
        .routes(routes!(open_chat))
        .routes(routes!(chat, rename_group))
        .routes(routes!(chat_members, add_members))
        .routes(routes!(remove_member))
        .routes(routes!(mark_read))
        .routes(routes!(history, post_message))
}

pub fn routes() -> Router<Shared> {
    let (router, _) = api().split_for_parts();
    router
        .fallback(|| async { error(StatusCode::NOT_FOUND, "Not found") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
        })
}

/// The OpenAPI 3.1 document of the REST API, as `GET /api/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().split_for_parts().1
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "palaver",
        description = "The REST half of palaver's wire contract (docs/protocol.md); the real-time \
                       half is Socket.IO at /socket.io."
    ),
    modifiers(&BearerToken)
)]
struct ApiDoc;

/// The `bearer` security scheme: the routes that need a caller take `Authorization: Bearer`.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person (the contract's exact texts).
    message: String,
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = ErrorBody {
        message: message.into(),
    };
    (status, Json(body)).into_response()
}

/// The error of a REST call, with its status, and the refusal it counts as in the metrics.
pub struct RestError {
    status: StatusCode,
    message: String,
    refused: Option<&'static str>,
}

impl RestError {
    pub fn new(status: StatusCode, message: &str) -> Self {
        Self {
            status,
            message: message.into(),
            refused: None,
        }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let mut response = error(self.status, &self.message);
        if let Some(reason) = self.refused {
            response.extensions_mut().insert(RefusedAs(reason));
        }
        response
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
            ApiError::RegistrationClosed | ApiError::AccountDisabled => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Refused(refusal) => refusal_status(*refusal),
            ApiError::Unavailable | ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        };
        let refused = match &e {
            ApiError::Refused(refusal) => Some(refusal_reason(*refusal)),
            ApiError::TooManyAttempts => Some("too_many_attempts"),
            ApiError::TooManyRegistrations => Some("too_many_registrations"),
            ApiError::Busy => Some("busy"),
            _ => None,
        };
        RestError {
            refused,
            ..RestError::new(status, &e.to_string())
        }
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
                RestError::new(status, message)
            })?;
        let bytes = if bytes.is_empty() {
            axum::body::Bytes::from_static(b"{}")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            RestError::new(
                StatusCode::BAD_REQUEST,
                &format!("Invalid request body: {e}"),
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
            .map_err(|r| RestError::new(r.status(), "Invalid URL"))
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
            .map_err(|r| RestError::new(r.status(), "Invalid URL"))
    }
}

fn number(query: &HashMap<String, String>, key: &str) -> Result<Option<u64>, RestError> {
    match query.get(key).map(|v| v.trim()) {
        None | Some("") => Ok(None),
        Some(value) => value.parse().map(Some).map_err(|_| {
            RestError::new(
                StatusCode::BAD_REQUEST,
                &format!("{key} must be a non-negative whole number"),
            )
        }),
    }
}

/// `GET /health`'s answer.
#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
    /// `open`, or `closed` when the server takes no registrations (`--registration closed`):
    /// the web client offers its registration form only when it is `open`.
    #[schema(example = "open")]
    registration: &'static str,
}

/// Unauthenticated: whether the server answers, and whether it takes registrations.
#[utoipa::path(get, path = "/health", tag = "server",
    responses((status = 200, description = "The server is up", body = Health)))]
async fn health(State(shared): State<Shared>) -> Json<Health> {
    let registration = if shared.app.registration_open() {
        "open"
    } else {
        "closed"
    };
    Json(Health {
        status: "ok",
        registration,
    })
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "server",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(|| {
        openapi()
            .to_json()
            .expect("the generated document serialises")
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.as_str(),
    )
        .into_response()
}

/// A token and the user it is for: what registering and logging in answer.
#[derive(Serialize, ToSchema)]
struct Session {
    /// Send as `Authorization: Bearer <token>`, or as the Socket.IO handshake's `auth.token`.
    token: String,
    user: UserView,
}

#[derive(Deserialize, ToSchema)]
struct RegisterBody {
    /// 1 to 64 characters after trimming.
    name: Option<String>,
    email: Option<String>,
    /// 8 to 128 characters.
    password: Option<String>,
}

#[utoipa::path(post, path = "/api/auth/register", tag = "auth",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "Registered and logged in", body = Session),
        (status = 400, description = "A field is missing or invalid", body = ErrorBody),
        (status = 409, description = "Email already registered", body = ErrorBody),
        (status = 429, description = "Too many registrations from this address", body = ErrorBody),
        (status = 503, description = "Server busy or storage unavailable", body = ErrorBody),
    ))]
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
    Ok((StatusCode::CREATED, Json(Session { token, user })).into_response())
}

#[derive(Deserialize, ToSchema)]
struct LoginBody {
    email: Option<String>,
    password: Option<String>,
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    request_body = LoginBody,
    responses(
        (status = 200, description = "Logged in", body = Session),
        (status = 400, description = "A field is missing or invalid", body = ErrorBody),
        (status = 401, description = "Invalid credentials", body = ErrorBody),
        (status = 429, description = "Too many attempts", body = ErrorBody),
        (status = 503, description = "Server busy or storage unavailable", body = ErrorBody),
    ))]
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
    Ok(Json(Session { token, user }).into_response())
}

#[utoipa::path(post, path = "/api/auth/callback", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user of an external provider's token, created at its first login", body = UserView),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
async fn external_callback(
    State(shared): State<Shared>,
    parts: Parts,
) -> Result<Response, RestError> {
    let token = bearer(&parts).ok_or_else(|| RestError::from(ApiError::Unauthorized))?;
    Ok(Json(shared.app.external_callback(token).await?).into_response())
}

/// Ends every session of the caller: all their tokens are refused from now on and their
/// sockets are closed.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Every token of the caller is revoked"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
async fn logout(
    State(shared): State<Shared>,
    Caller(user): Caller,
) -> Result<StatusCode, RestError> {
    super::revoke_sessions(&shared.app, &shared.io, &user.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = UserView),
        (status = 401, description = "Unauthorized", body = ErrorBody),
    ))]
async fn me(Caller(user): Caller) -> Response {
    Json(UserView::from(&user)).into_response()
}

#[utoipa::path(get, path = "/api/users", tag = "users",
    security(("bearer" = [])),
    params(
        ("q" = Option<String>, Query, description = "Part of a name, or an exact email"),
        ("limit" = Option<u64>, Query, description = "At most this many users"),
    ),
    responses(
        (status = 200, description = "Users other than the caller", body = Vec<PublicUser>),
        (status = 400, description = "A bad number", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many searches", body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/api/chats", tag = "chats",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's chats, most recent first", body = Vec<ChatView>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
async fn chats(State(shared): State<Shared>, Caller(user): Caller) -> Result<Response, RestError> {
    Ok(Json(shared.app.chats_of(&user.id)?).into_response())
}

#[utoipa::path(post, path = "/api/chats/with/{participant_id}", tag = "chats",
    security(("bearer" = [])),
    params(("participant_id" = String, Path, description = "The other user's id")),
    responses(
        (status = 200, description = "The one chat of the two users, created if new", body = ChatView),
        (status = 400, description = "Not another user's id", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "User not found", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
async fn open_chat(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(participant_id): Param,
) -> Result<Response, RestError> {
    let chat = shared.app.open_chat_with(&user.id, &participant_id).await?;
    socket::introduce(&shared.io, &shared.app, &user.id, &participant_id).await;
    Ok(Json(chat).into_response())
}

#[utoipa::path(get, path = "/api/messages/chat/{chat_id}", tag = "messages",
    security(("bearer" = [])),
    params(
        ("chat_id" = String, Path, description = "A chat of the caller"),
        ("before" = Option<u64>, Query, description = "Messages below this seq (the newest of them)"),
        ("after" = Option<u64>, Query, description = "Messages above this seq (the oldest of them)"),
        ("limit" = Option<u64>, Query, description = "At most this many (default 100, at most 500)"),
    ),
    responses(
        (status = 200, description = "A page of messages, ascending by seq", body = Vec<MessageView>),
        (status = 400, description = "A bad number", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Chat not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
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

#[derive(Deserialize, ToSchema)]
struct MessageBody {
    /// 1 to `PALAVER_MAX_TEXT_CHARS` characters after trimming.
    #[schema(value_type = String)]
    text: Option<serde_json::Value>,
    /// The client's id of this message: a retry with the same one answers the original.
    #[serde(rename = "clientMsgId")]
    #[schema(value_type = Option<String>)]
    client_msg_id: Option<serde_json::Value>,
}

#[utoipa::path(post, path = "/api/messages/chat/{chat_id}", tag = "messages",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "A chat of the caller")),
    request_body = MessageBody,
    responses(
        (status = 201, description = "Stored (durably) and delivered to the chat's sockets, or the original of a retry", body = MessageView),
        (status = 400, description = "Empty, too long or invalid", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Chat not found", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "Failed to send message", body = ErrorBody),
    ))]
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

#[derive(Deserialize, ToSchema)]
struct GroupBody {
    /// 1 to 64 characters after trimming.
    name: Option<String>,
    /// The other members (the caller is the owner and a member); at most 255.
    #[serde(rename = "memberIds")]
    member_ids: Option<Vec<String>>,
}

#[utoipa::path(post, path = "/api/chats", tag = "chats",
    security(("bearer" = [])),
    request_body = GroupBody,
    responses(
        (status = 201, description = "The group, created with the caller as its owner", body = ChatView),
        (status = 400, description = "A bad name, a bad or unknown id, or too many members", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/api/chats/{chat_id}", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "A chat of the caller")),
    responses(
        (status = 200, description = "The chat as the caller sees it", body = ChatView),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Chat not found (or the caller is not a member)", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
async fn chat(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(chat_id): Param,
) -> Result<Response, RestError> {
    Ok(Json(shared.app.chat_of(&user.id, &chat_id)?).into_response())
}

#[derive(Deserialize, ToSchema)]
struct RenameBody {
    /// 1 to 64 characters after trimming.
    name: Option<String>,
}

#[utoipa::path(patch, path = "/api/chats/{chat_id}", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "A group of the caller")),
    request_body = RenameBody,
    responses(
        (status = 200, description = "The group after the rename", body = ChatView),
        (status = 400, description = "A bad name, or not a group chat", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Only the owner can do that", body = ErrorBody),
        (status = 404, description = "Chat not found", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
async fn rename_group(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(chat_id): Param,
    Body(body): Body<RenameBody>,
) -> Result<Response, RestError> {
    let name = body.name.unwrap_or_default();
    Ok(Json(shared.app.rename_group(&user.id, &chat_id, &name).await?).into_response())
}

#[utoipa::path(get, path = "/api/chats/{chat_id}/members", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "A chat of the caller")),
    responses(
        (status = 200, description = "The members in joining order (a group's owner first)", body = Vec<MemberView>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Chat not found", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
async fn chat_members(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(chat_id): Param,
) -> Result<Response, RestError> {
    Ok(Json(shared.app.members_of_chat(&user.id, &chat_id)?).into_response())
}

#[derive(Deserialize, ToSchema)]
struct AddMembersBody {
    /// 1 to 100 user ids; members already are skipped.
    #[serde(rename = "userIds")]
    user_ids: Option<Vec<String>>,
}

#[utoipa::path(post, path = "/api/chats/{chat_id}/members", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "A group of the caller")),
    request_body = AddMembersBody,
    responses(
        (status = 200, description = "The group after the additions", body = ChatView),
        (status = 400, description = "Bad or unknown ids, too many, or not a group chat", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Only the owner can do that", body = ErrorBody),
        (status = 404, description = "Chat not found", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
async fn add_members(
    State(shared): State<Shared>,
    Caller(user): Caller,
    Param(chat_id): Param,
    Body(body): Body<AddMembersBody>,
) -> Result<Response, RestError> {
    let ids = body.user_ids.unwrap_or_default();
    Ok(Json(shared.app.add_members(&user.id, &chat_id, ids).await?).into_response())
}

/// The owner removes a member; any member removes themself (leaves).
#[utoipa::path(delete, path = "/api/chats/{chat_id}/members/{user_id}", tag = "chats",
    security(("bearer" = [])),
    params(
        ("chat_id" = String, Path, description = "A group of the caller"),
        ("user_id" = String, Path, description = "The member to remove (the caller, to leave)"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not a group chat", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Only the owner can do that", body = ErrorBody),
        (status = 404, description = "Chat or member not found", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
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

#[derive(Deserialize, ToSchema)]
struct ReadBody {
    /// Read up to this seq (capped at the chat's last; a lower one than stored changes nothing).
    #[schema(value_type = u64)]
    seq: Option<serde_json::Value>,
}

/// `POST /api/chats/:chatId/read`'s answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReadAnswer {
    /// Always `true`.
    ok: bool,
    /// The caller's read position after the request.
    last_read_seq: u64,
}

#[utoipa::path(post, path = "/api/chats/{chat_id}/read", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path, description = "A chat of the caller")),
    request_body = ReadBody,
    responses(
        (status = 200, description = "The read position after the request (it only moves forward)", body = ReadAnswer),
        (status = 400, description = "A bad seq", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Chat not found", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
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
    Ok(Json(ReadAnswer {
        ok: true,
        last_read_seq,
    })
    .into_response())
}
