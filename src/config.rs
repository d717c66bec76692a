//! Configuration: command-line flags, then environment variables, then an optional TOML file
//! (`--config`), then built-in defaults. Everything is validated once, at start; a bad value
//! stops the start with a message naming the setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use serde::Deserialize;

use crate::domain::presence::PresenceScope;
pub use crate::domain::validate::is_loopback_http;
use crate::limits::{
    CONNECT_TIMEOUT, CONNECTION_TIMEOUT_CEILING, CONNECTIONS_MAX_DEFAULT,
    CONNECTIONS_PER_ADDRESS_DEFAULT, DB_CACHE_MB_CEILING, DB_CACHE_MB_DEFAULT,
    FIRST_BYTE_TIMEOUT_DEFAULT, JWT_SECRET_BYTES_MIN, PRESENCE_GRACE_CEILING,
    PRESENCE_GRACE_DEFAULT, PRESENCE_TICK_CEILING, PRESENCE_TICK_DEFAULT,
    REGISTRATIONS_PER_ADDRESS_CEILING, REGISTRATIONS_PER_ADDRESS_DEFAULT,
    REQUEST_HEAD_TIMEOUT_DEFAULT, SEND_BURST_CEILING, SEND_RATE_CEILING, SOCKETS_PER_USER_CEILING,
    SOCKETS_PER_USER_DEFAULT, TEXT_CHARS_CEILING, TEXT_CHARS_DEFAULT, TOKEN_TTL_DEFAULT,
    TOKEN_TTL_MAX, TRUSTED_PROXIES_MAX,
};

#[derive(Debug, Parser)]
#[command(
    name = "palaver",
    version,
    about = "A self-hosted real-time chat server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    #[command(flatten)]
    Admin(crate::admin::AdminCommand),
}

/// Every setting is optional here so that flags and the environment can be told apart from
/// the file and the defaults.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (names in snake_case, e.g. `listen`).
    #[arg(long, env = "PALAVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "PALAVER_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the database and the generated token secret.
    #[arg(long, env = "PALAVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Secret for our HS256 tokens (unset or empty: generated once and kept in the data dir).
    /// On the command line it shows in `ps`: prefer `--jwt-secret-file` or the environment.
    #[arg(long, env = "PALAVER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A file holding the secret for our HS256 tokens (one line; a trailing newline is ignored).
    /// Not together with `--jwt-secret`.
    #[arg(long, env = "PALAVER_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Lifetime of issued tokens: seconds, or a number with s, m, h or d.
    #[arg(long, env = "PALAVER_TOKEN_TTL")]
    pub token_ttl: Option<String>,
    /// Comma-separated origins allowed by CORS.
    #[arg(long, env = "PALAVER_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// PEM file with the external identity provider's public key (RS256 or ES256).
    #[arg(long, env = "PALAVER_AUTH_PUBLIC_KEY")]
    pub auth_public_key: Option<String>,
    /// JWKS of the external provider: a file path or an https:// URL.
    #[arg(long, env = "PALAVER_AUTH_JWKS")]
    pub auth_jwks: Option<String>,
    /// Required `iss` of external tokens.
    #[arg(long, env = "PALAVER_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Required `aud` of external tokens. Required with an external provider, unless
    /// `--auth-audience-any true` says that tokens for any of its applications are accepted.
    #[arg(long, env = "PALAVER_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// `true`: accept external tokens whatever their `aud` (any application of the provider
    /// may then log in here). Only without `--auth-audience`.
    #[arg(long, env = "PALAVER_AUTH_AUDIENCE_ANY")]
    pub auth_audience_any: Option<String>,
    /// Sustained `send-message` rate per user (messages per second).
    #[arg(long, env = "PALAVER_SEND_RATE_PER_SEC")]
    pub send_rate_per_sec: Option<String>,
    /// Burst of `send-message` per user.
    #[arg(long, env = "PALAVER_SEND_BURST")]
    pub send_burst: Option<String>,
    /// Longest message text in Unicode scalar values.
    #[arg(long, env = "PALAVER_MAX_TEXT_CHARS")]
    pub max_text_chars: Option<String>,
    /// Serve the web client at `/` (`true` or `false`; `false`: API only, `/` answers 404).
    #[arg(long, env = "PALAVER_WEB")]
    pub web: Option<String>,
    /// How long a user stays online after their last socket closed (`5s`, `500ms`; 0: none).
    #[arg(long, env = "PALAVER_PRESENCE_GRACE")]
    pub presence_grace: Option<String>,
    /// How often presence changes are gathered and announced (`250ms`; 0: each at once).
    #[arg(long, env = "PALAVER_PRESENCE_TICK")]
    pub presence_tick: Option<String>,
    /// Who hears of a user's presence: `all` (every user) or `contacts` (users who share a chat).
    #[arg(long, env = "PALAVER_PRESENCE_SCOPE")]
    pub presence_scope: Option<String>,
    /// Comma-separated addresses or CIDR ranges of reverse proxies whose `X-Forwarded-For` is
    /// believed (default: none, the TCP peer is the client).
    #[arg(long, env = "PALAVER_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Concurrent connections from one client address (trusted proxies are exempt).
    #[arg(long, env = "PALAVER_CONNECTIONS_PER_ADDRESS")]
    pub connections_per_address: Option<String>,
    /// Concurrent connections in all (the server also stays below its open-files limit).
    #[arg(long, env = "PALAVER_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// A connection that sends no byte within this is closed (seconds, or with s/m/h).
    #[arg(long, env = "PALAVER_FIRST_BYTE_TIMEOUT")]
    pub first_byte_timeout: Option<String>,
    /// A request head must arrive within this; also how long an idle keep-alive connection is kept.
    #[arg(long, env = "PALAVER_REQUEST_HEAD_TIMEOUT")]
    pub request_head_timeout: Option<String>,
    /// A Socket.IO transport that sends no CONNECT packet within this is closed.
    #[arg(long, env = "PALAVER_SOCKET_IO_CONNECT_TIMEOUT")]
    pub socket_io_connect_timeout: Option<String>,
    /// The database's page cache in MiB (the server's memory grows with the database up to it).
    #[arg(long, env = "PALAVER_DB_CACHE_MB")]
    pub db_cache_mb: Option<String>,
    /// Registrations per client address per hour.
    #[arg(long, env = "PALAVER_REGISTRATIONS_PER_ADDRESS")]
    pub registrations_per_address: Option<String>,
    /// Sockets one user may have open at once; one more is refused at the handshake.
    #[arg(long, env = "PALAVER_MAX_SOCKETS_PER_USER")]
    pub max_sockets_per_user: Option<String>,
    /// `open`: anyone may register (`POST /api/auth/register`); `closed`: only `palaver user
    /// add` (and an external identity provider) creates accounts.
    #[arg(long, env = "PALAVER_REGISTRATION")]
    pub registration: Option<String>,
    /// Address of a separate listener serving `GET /metrics` (Prometheus text format); unset:
    /// no metrics are served or kept. Keep it private (loopback or an internal network).
    #[arg(long, env = "PALAVER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Log lines as `text` (for a terminal) or `json` (one object a line: timestamp, level,
    /// target, fields with the message, spans). The level filter is `RUST_LOG`.
    #[arg(long, env = "PALAVER_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// The same settings as read from a TOML file. Numbers may be written as numbers or strings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    jwt_secret: Option<String>,
    jwt_secret_file: Option<PathBuf>,
    token_ttl: Option<toml::Value>,
    cors_origins: Option<toml::Value>,
    auth_public_key: Option<String>,
    auth_jwks: Option<String>,
    auth_issuer: Option<String>,
    auth_audience: Option<String>,
    auth_audience_any: Option<toml::Value>,
    send_rate_per_sec: Option<toml::Value>,
    send_burst: Option<toml::Value>,
    max_text_chars: Option<toml::Value>,
    web: Option<toml::Value>,
    presence_grace: Option<toml::Value>,
    presence_tick: Option<toml::Value>,
    presence_scope: Option<toml::Value>,
    trusted_proxies: Option<toml::Value>,
    connections_per_address: Option<toml::Value>,
    max_connections: Option<toml::Value>,
    first_byte_timeout: Option<toml::Value>,
    request_head_timeout: Option<toml::Value>,
    socket_io_connect_timeout: Option<toml::Value>,
    registrations_per_address: Option<toml::Value>,
    db_cache_mb: Option<toml::Value>,
    max_sockets_per_user: Option<toml::Value>,
    registration: Option<String>,
    metrics_listen: Option<String>,
    log_format: Option<String>,
}

/// Where the external identity provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    PemFile(PathBuf),
    JwksFile(PathBuf),
    JwksUrl(String),
}

#[derive(Debug, Clone)]
pub struct ExternalAuth {
    pub keys: Vec<KeySource>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// How connections are bounded and whose addresses are believed (src/transport/connections.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    pub first_byte_timeout: Duration,
    pub request_head_timeout: Duration,
    pub socket_io_connect_timeout: Duration,
    pub per_address: u32,
    pub max: u32,
    /// Peers whose `X-Forwarded-For` names the client; exempt from `per_address`.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            first_byte_timeout: FIRST_BYTE_TIMEOUT_DEFAULT,
            request_head_timeout: REQUEST_HEAD_TIMEOUT_DEFAULT,
            socket_io_connect_timeout: CONNECT_TIMEOUT,
            per_address: CONNECTIONS_PER_ADDRESS_DEFAULT,
            max: CONNECTIONS_MAX_DEFAULT,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Validated settings.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `None`: use (or generate) the secret kept in the data directory.
    pub jwt_secret: Option<String>,
    pub token_ttl: Duration,
    pub cors_origins: Vec<String>,
    pub external_auth: Option<ExternalAuth>,
    pub send_rate_per_sec: u32,
    pub send_burst: u32,
    pub max_text_chars: usize,
    /// Whether `/` serves the embedded web client.
    pub web: bool,
    /// How long a user stays online after their last socket closed.
    pub presence_grace: Duration,
    /// How often presence changes are announced; zero: each at once.
    pub presence_tick: Duration,
    /// Who hears of a user's presence.
    pub presence_scope: PresenceScope,
    pub connections: ConnectionSettings,
    /// Registrations per client address per `REGISTRATION_WINDOW_MS`.
    pub registrations_per_address: u32,
    /// redb's page cache, in bytes.
    pub db_cache_bytes: usize,
    pub max_sockets_per_user: u32,
    /// Whether `POST /api/auth/register` creates accounts (`--registration open`).
    pub registration_open: bool,
    /// Where `GET /metrics` is served; `None`: metrics are off.
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing-subscriber's human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

impl std::fmt::Debug for Config {
    // By hand, so that the secret can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<set>"))
            .field("token_ttl", &self.token_ttl)
            .field("cors_origins", &self.cors_origins)
            .field("external_auth", &self.external_auth)
            .field("send_rate_per_sec", &self.send_rate_per_sec)
            .field("send_burst", &self.send_burst)
            .field("max_text_chars", &self.max_text_chars)
            .field("web", &self.web)
            .field("presence_grace", &self.presence_grace)
            .field("presence_tick", &self.presence_tick)
            .field("presence_scope", &self.presence_scope)
            .field("connections", &self.connections)
            .field("registrations_per_address", &self.registrations_per_address)
            .field("db_cache_bytes", &self.db_cache_bytes)
            .field("max_sockets_per_user", &self.max_sockets_per_user)
            .field("registration_open", &self.registration_open)
            .field("metrics_listen", &self.metrics_listen)
            .field("log_format", &self.log_format)
            .finish()
    }
}

const MIB: usize = 1024 * 1024;

/// Shortest accepted `PALAVER_JWT_SECRET`.

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

fn bad(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            data_dir: PathBuf::from("./palaver-data"),
            jwt_secret: None,
            token_ttl: TOKEN_TTL_DEFAULT,
            cors_origins: vec![
                "http://localhost:8081".into(),
                "http://localhost:5173".into(),
            ],
            external_auth: None,
            send_rate_per_sec: 10,
            send_burst: 30,
            max_text_chars: TEXT_CHARS_DEFAULT,
            web: true,
            presence_grace: PRESENCE_GRACE_DEFAULT,
            presence_tick: PRESENCE_TICK_DEFAULT,
            presence_scope: PresenceScope::All,
            connections: ConnectionSettings::default(),
            registrations_per_address: REGISTRATIONS_PER_ADDRESS_DEFAULT,
            db_cache_bytes: DB_CACHE_MB_DEFAULT as usize * MIB,
            max_sockets_per_user: SOCKETS_PER_USER_DEFAULT,
            registration_open: true,
            metrics_listen: None,
            log_format: LogFormat::Text,
        }
    }
}

/// Renders a TOML value as the string a flag would carry (`3000`, `"7d"`, `["a", "b"]`).
fn file_value_as_flag(value: toml::Value) -> String {
    match value {
        toml::Value::String(s) => s,
        toml::Value::Array(items) => items
            .into_iter()
            .map(file_value_as_flag)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

impl Config {
    /// Merges flags/environment (already merged by clap) over the file over the defaults.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<FileSettings>(&text)
                    .map_err(|e| bad("--config", format!("{}: {e}", path.display())))?
            }
            None => FileSettings::default(),
        };
        let text = |flag: Option<String>, from_file: Option<toml::Value>| {
            flag.or(from_file.map(file_value_as_flag))
        };
        let mut config = Config::default();

        if let Some(listen) = args.listen.or(file.listen) {
            config.listen = parse_listen(&listen)?;
        }
        if let Some(dir) = args.data_dir.or(file.data_dir) {
            if dir.as_os_str().is_empty() {
                return Err(bad("PALAVER_DATA_DIR", "must not be empty"));
            }
            config.data_dir = dir;
        }
        config.jwt_secret = jwt_secret(
            args.jwt_secret.or(file.jwt_secret),
            args.jwt_secret_file.or(file.jwt_secret_file),
        )?;
        // RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
        if config
            .jwt_secret
            .as_ref()
            .is_some_and(|s| s.len() < JWT_SECRET_BYTES_MIN)
        {
            return Err(bad(
                "PALAVER_JWT_SECRET",
                format!(
                    "must be at least {JWT_SECRET_BYTES_MIN} bytes (or unset, to generate one)"
                ),
            ));
        }
        if let Some(ttl) = text(args.token_ttl, file.token_ttl) {
            config.token_ttl = parse_duration(&ttl).map_err(|r| bad("PALAVER_TOKEN_TTL", r))?;
        }
        if let Some(origins) = text(args.cors_origins, file.cors_origins) {
            config.cors_origins = parse_origins(&origins)?;
        }
        if let Some(rate) = text(args.send_rate_per_sec, file.send_rate_per_sec) {
            config.send_rate_per_sec =
                parse_positive(&rate, "PALAVER_SEND_RATE_PER_SEC", SEND_RATE_CEILING)?;
        }
        if let Some(burst) = text(args.send_burst, file.send_burst) {
            config.send_burst = parse_positive(&burst, "PALAVER_SEND_BURST", SEND_BURST_CEILING)?;
        }
        if let Some(max) = text(args.max_text_chars, file.max_text_chars) {
            let ceiling = u32::try_from(TEXT_CHARS_CEILING).expect("small constant");
            config.max_text_chars =
                parse_positive(&max, "PALAVER_MAX_TEXT_CHARS", ceiling)? as usize;
        }
        if let Some(mb) = text(args.db_cache_mb, file.db_cache_mb) {
            let mb = parse_positive(&mb, "PALAVER_DB_CACHE_MB", DB_CACHE_MB_CEILING)?;
            config.db_cache_bytes = mb as usize * MIB;
        }
        if let Some(web) = text(args.web, file.web) {
            config.web = parse_bool(&web, "PALAVER_WEB")?;
        }
        if let Some(grace) = text(args.presence_grace, file.presence_grace) {
            config.presence_grace =
                parse_short_duration(&grace, "PALAVER_PRESENCE_GRACE", PRESENCE_GRACE_CEILING)?;
        }
        if let Some(tick) = text(args.presence_tick, file.presence_tick) {
            config.presence_tick =
                parse_short_duration(&tick, "PALAVER_PRESENCE_TICK", PRESENCE_TICK_CEILING)?;
        }
        if let Some(scope) = text(args.presence_scope, file.presence_scope) {
            config.presence_scope = parse_presence_scope(&scope)?;
        }
        let audience_any = match text(args.auth_audience_any, file.auth_audience_any) {
            Some(any) => parse_bool(&any, "PALAVER_AUTH_AUDIENCE_ANY")?,
            None => false,
        };
        if let Some(proxies) = text(args.trusted_proxies, file.trusted_proxies) {
            config.connections.trusted_proxies = parse_trusted_proxies(&proxies)?;
        }
        let connections = &mut config.connections;
        if let Some(n) = text(args.connections_per_address, file.connections_per_address) {
            connections.per_address = parse_positive(
                &n,
                "PALAVER_CONNECTIONS_PER_ADDRESS",
                CONNECTIONS_MAX_DEFAULT,
            )?;
        }
        if let Some(n) = text(args.max_connections, file.max_connections) {
            connections.max =
                parse_positive(&n, "PALAVER_MAX_CONNECTIONS", CONNECTIONS_MAX_DEFAULT)?;
        }
        if let Some(t) = text(args.first_byte_timeout, file.first_byte_timeout) {
            connections.first_byte_timeout = parse_timeout(&t, "PALAVER_FIRST_BYTE_TIMEOUT")?;
        }
        if let Some(t) = text(args.request_head_timeout, file.request_head_timeout) {
            connections.request_head_timeout = parse_timeout(&t, "PALAVER_REQUEST_HEAD_TIMEOUT")?;
        }
        if let Some(t) = text(
            args.socket_io_connect_timeout,
            file.socket_io_connect_timeout,
        ) {
            connections.socket_io_connect_timeout =
                parse_timeout(&t, "PALAVER_SOCKET_IO_CONNECT_TIMEOUT")?;
        }
        if let Some(n) = text(
            args.registrations_per_address,
            file.registrations_per_address,
        ) {
            config.registrations_per_address = parse_positive(
                &n,
                "PALAVER_REGISTRATIONS_PER_ADDRESS",
                REGISTRATIONS_PER_ADDRESS_CEILING,
            )?;
        }
        if let Some(max) = text(args.max_sockets_per_user, file.max_sockets_per_user) {
            config.max_sockets_per_user = parse_positive(
                &max,
                "PALAVER_MAX_SOCKETS_PER_USER",
                SOCKETS_PER_USER_CEILING,
            )?;
        }
        if let Some(registration) = args.registration.or(file.registration) {
            config.registration_open = match registration.trim() {
                "open" => true,
                "closed" => false,
                _ => {
                    return Err(bad(
                        "PALAVER_REGISTRATION",
                        format!("{registration:?} must be open or closed"),
                    ));
                }
            };
        }
        if let Some(address) = args.metrics_listen.or(file.metrics_listen) {
            config.metrics_listen = parse_metrics_listen(&address)?;
        }
        if let Some(format) = args.log_format.or(file.log_format) {
            config.log_format = parse_log_format(&format)?;
        }
        config.external_auth = external_auth(
            args.auth_public_key.or(file.auth_public_key),
            args.auth_jwks.or(file.auth_jwks),
            args.auth_issuer.or(file.auth_issuer),
            Audience::from_settings(args.auth_audience.or(file.auth_audience), audience_any)?,
        )?;
        Ok(config)
    }
}

/// The secret given directly or in a file (not both); `None` when neither gives one.
fn jwt_secret(
    secret: Option<String>,
    secret_file: Option<PathBuf>,
) -> Result<Option<String>, ConfigError> {
    let secret = secret.filter(|s| !s.is_empty());
    let secret_file = secret_file.filter(|p| !p.as_os_str().is_empty());
    match (secret, secret_file) {
        (Some(_), Some(_)) => Err(bad(
            "PALAVER_JWT_SECRET_FILE",
            "give the secret either directly (PALAVER_JWT_SECRET) or in a file, not both",
        )),
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                bad(
                    "PALAVER_JWT_SECRET_FILE",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let secret = text.trim_end_matches(['\n', '\r']);
            if secret.is_empty() {
                return Err(bad(
                    "PALAVER_JWT_SECRET_FILE",
                    format!("{} is empty", path.display()),
                ));
            }
            Ok(Some(secret.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

fn parse_listen(value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        bad(
            "PALAVER_LISTEN",
            format!("{value:?} is not an address like 127.0.0.1:3000"),
        )
    })
}

/// An address, or empty for none.
fn parse_metrics_listen(value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        bad(
            "PALAVER_METRICS_LISTEN",
            format!("{value:?} is not an address like 127.0.0.1:9090"),
        )
    })
}

fn parse_log_format(value: &str) -> Result<LogFormat, ConfigError> {
    match value.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(bad(
            "PALAVER_LOG_FORMAT",
            format!("{value:?} must be text or json"),
        )),
    }
}

/// `3600`, `3600s`, `90m`, `12h`, `7d`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 7d"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{value:?}: unit must be s, m, h or d")),
    };
    if seconds == 0 || seconds > TOKEN_TTL_MAX.as_secs() {
        return Err(format!("{value:?} must be between 1s and 366d"));
    }
    Ok(Duration::from_secs(seconds))
}

/// `0`, `250ms`, `5s`, `2m`: a duration that may be zero, up to `ceiling`.
fn parse_short_duration(
    value: &str,
    setting: &'static str,
    ceiling: Duration,
) -> Result<Duration, ConfigError> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let n: u64 = number.parse().map_err(|_| {
        bad(
            setting,
            format!("{value:?} is not a duration like 5s or 250ms"),
        )
    })?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad(setting, format!("{value:?}: unit must be ms, s or m"))),
    };
    if duration > ceiling {
        return Err(bad(
            setting,
            format!("{value:?} is longer than {}s", ceiling.as_secs()),
        ));
    }
    Ok(duration)
}

fn parse_origins(value: &str) -> Result<Vec<String>, ConfigError> {
    let origins: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    for origin in &origins {
        let well_formed = (origin.starts_with("http://") || origin.starts_with("https://"))
            && !origin.ends_with('/')
            && origin.parse::<axum::http::HeaderValue>().is_ok();
        if !well_formed {
            return Err(bad(
                "PALAVER_CORS_ORIGINS",
                format!("{origin:?} is not an origin like https://chat.example.com"),
            ));
        }
    }
    Ok(origins)
}

fn parse_positive(value: &str, setting: &'static str, max: u32) -> Result<u32, ConfigError> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad(
            setting,
            format!("{value:?} must be a whole number from 1 to {max}"),
        )),
    }
}

fn parse_timeout(value: &str, setting: &'static str) -> Result<Duration, ConfigError> {
    let ceiling = CONNECTION_TIMEOUT_CEILING.as_secs();
    match parse_duration(value) {
        Ok(duration) if duration.as_secs() <= ceiling => Ok(duration),
        _ => Err(bad(
            setting,
            format!("{value:?} must be a duration from 1s to {ceiling}s"),
        )),
    }
}

/// `10.0.0.1, 10.1.0.0/16, fd00::/8`: addresses (a single host) or CIDR ranges.
fn parse_trusted_proxies(value: &str) -> Result<Vec<IpNet>, ConfigError> {
    let setting = "PALAVER_TRUSTED_PROXIES";
    let entries: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.len() > TRUSTED_PROXIES_MAX {
        return Err(bad(
            setting,
            format!("at most {TRUSTED_PROXIES_MAX} entries"),
        ));
    }
    entries
        .into_iter()
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    bad(
                        setting,
                        format!("{entry:?} is not an address or CIDR range like 10.0.0.0/8"),
                    )
                })
        })
        .collect()
}

fn parse_presence_scope(value: &str) -> Result<PresenceScope, ConfigError> {
    match value.trim() {
        "all" => Ok(PresenceScope::All),
        "contacts" => Ok(PresenceScope::Contacts),
        _ => Err(bad(
            "PALAVER_PRESENCE_SCOPE",
            format!("{value:?} must be all or contacts"),
        )),
    }
}

fn parse_bool(value: &str, setting: &'static str) -> Result<bool, ConfigError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(setting, format!("{value:?} must be true or false"))),
    }
}

/// What the external provider's tokens must carry as `aud`.
enum Audience {
    /// Neither an audience nor the opt-out: refused if a provider is configured.
    Unset,
    Required(String),
    /// `PALAVER_AUTH_AUDIENCE_ANY=true`.
    Any,
}

impl Audience {
    fn from_settings(audience: Option<String>, any: bool) -> Result<Self, ConfigError> {
        match (audience.filter(|s| !s.is_empty()), any) {
            (Some(_), true) => Err(bad(
                "PALAVER_AUTH_AUDIENCE_ANY",
                "contradicts PALAVER_AUTH_AUDIENCE: give one or the other",
            )),
            (Some(audience), false) => Ok(Self::Required(audience)),
            (None, true) => Ok(Self::Any),
            (None, false) => Ok(Self::Unset),
        }
    }
}

fn external_auth(
    public_key: Option<String>,
    jwks: Option<String>,
    issuer: Option<String>,
    audience: Audience,
) -> Result<Option<ExternalAuth>, ConfigError> {
    let mut keys = Vec::new();
    if let Some(path) = public_key.filter(|s| !s.is_empty()) {
        keys.push(KeySource::PemFile(PathBuf::from(path)));
    }
    if let Some(jwks) = jwks.filter(|s| !s.is_empty()) {
        if jwks.starts_with("https://") || is_loopback_http(&jwks) {
            keys.push(KeySource::JwksUrl(jwks));
        } else if jwks.starts_with("http://") {
            return Err(bad(
                "PALAVER_AUTH_JWKS",
                "a JWKS URL must use https:// (plain http only on loopback)",
            ));
        } else {
            keys.push(KeySource::JwksFile(PathBuf::from(jwks)));
        }
    }
    let issuer = issuer.filter(|s| !s.is_empty());
    if keys.is_empty() {
        if issuer.is_some() || !matches!(audience, Audience::Unset) {
            return Err(bad(
                "PALAVER_AUTH_ISSUER",
                "issuer/audience are set but neither PALAVER_AUTH_PUBLIC_KEY nor PALAVER_AUTH_JWKS is",
            ));
        }
        return Ok(None);
    }
    // Without an audience, a token the provider signed for any other application (another
    // site using the same provider account) would log its user in here.
    let audience = match audience {
        Audience::Required(audience) => Some(audience),
        Audience::Any => None,
        Audience::Unset => {
            return Err(bad(
                "PALAVER_AUTH_AUDIENCE",
                "required with an external provider (the `aud` its tokens carry for palaver); \
                 set PALAVER_AUTH_AUDIENCE_ANY=true to accept tokens issued for any application",
            ));
        }
    };
    Ok(Some(ExternalAuth {
        keys,
        issuer,
        audience,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: ServeArgs) -> Result<Config, ConfigError> {
        Config::resolve(args)
    }

    #[test]
    fn presence_can_be_scoped_to_contacts() {
        let config = resolve(ServeArgs {
            presence_scope: Some(" contacts".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(config.presence_scope, PresenceScope::Contacts);
    }

    #[test]
    fn defaults_need_no_configuration() {
        let config = resolve(ServeArgs::default()).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(config.data_dir, PathBuf::from("./palaver-data"));
        assert_eq!(config.token_ttl, Duration::from_secs(604_800));
        assert_eq!(
            (
                config.send_rate_per_sec,
                config.send_burst,
                config.max_text_chars
            ),
            (10, 30, 4000)
        );
        assert!(config.external_auth.is_none());
        assert!(config.web);
        assert_eq!(config.presence_scope, PresenceScope::All);
        assert_eq!(
            (config.presence_grace, config.presence_tick),
            (Duration::from_secs(5), Duration::from_millis(250))
        );
        assert_eq!(config.connections, ConnectionSettings::default());
        assert_eq!(config.connections.per_address, 256);
        assert!(config.connections.trusted_proxies.is_empty());
        assert_eq!(config.metrics_listen, None);
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn metrics_and_log_format_parse() {
        let config = resolve(ServeArgs {
            metrics_listen: Some("127.0.0.1:9090".into()),
            log_format: Some("json".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn connection_settings_parse() {
        let config = resolve(ServeArgs {
            trusted_proxies: Some("127.0.0.1, 10.0.0.0/8,fd00::/8".into()),
            connections_per_address: Some("8".into()),
            max_connections: Some("100".into()),
            first_byte_timeout: Some("2".into()),
            request_head_timeout: Some("1m".into()),
            socket_io_connect_timeout: Some("3s".into()),
            registrations_per_address: Some("500".into()),
            ..Default::default()
        })
        .unwrap();
        let c = &config.connections;
        assert_eq!(c.trusted_proxies.len(), 3);
        assert!(c.trusted_proxies[0].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
        assert!(c.trusted_proxies[1].contains(&"10.9.8.7".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!((c.per_address, c.max), (8, 100));
        assert_eq!(c.first_byte_timeout, Duration::from_secs(2));
        assert_eq!(c.request_head_timeout, Duration::from_secs(60));
        assert_eq!(c.socket_io_connect_timeout, Duration::from_secs(3));
        assert_eq!(config.registrations_per_address, 500);
    }

    #[test]
    fn bad_values_name_their_setting() {
        let cases: Vec<(ServeArgs, &str)> = vec![
            (
                ServeArgs {
                    listen: Some("nowhere".into()),
                    ..Default::default()
                },
                "PALAVER_LISTEN",
            ),
            (
                ServeArgs {
                    token_ttl: Some("7w".into()),
                    ..Default::default()
                },
                "PALAVER_TOKEN_TTL",
            ),
            (
                ServeArgs {
                    send_burst: Some("0".into()),
                    ..Default::default()
                },
                "PALAVER_SEND_BURST",
            ),
            (
                ServeArgs {
                    send_rate_per_sec: Some("ten".into()),
                    ..Default::default()
                },
                "PALAVER_SEND_RATE_PER_SEC",
            ),
            (
                ServeArgs {
                    max_text_chars: Some("99999".into()),
                    ..Default::default()
                },
                "PALAVER_MAX_TEXT_CHARS",
            ),
            (
                ServeArgs {
                    cors_origins: Some("localhost:3000".into()),
                    ..Default::default()
                },
                "PALAVER_CORS_ORIGINS",
            ),
            (
                ServeArgs {
                    auth_jwks: Some("http://x/jwks".into()),
                    ..Default::default()
                },
                "PALAVER_AUTH_JWKS",
            ),
            (
                ServeArgs {
                    auth_jwks: Some("http://127.0.0.1.evil.io/jwks".into()),
                    ..Default::default()
                },
                "PALAVER_AUTH_JWKS",
            ),
            (
                ServeArgs {
                    jwt_secret: Some("short".into()),
                    ..Default::default()
                },
                "PALAVER_JWT_SECRET",
            ),
            (
                ServeArgs {
                    web: Some("off".into()),
                    ..Default::default()
                },
                "PALAVER_WEB",
            ),
            (
                ServeArgs {
                    presence_grace: Some("1h".into()),
                    ..Default::default()
                },
                "PALAVER_PRESENCE_GRACE",
            ),
            (
                ServeArgs {
                    presence_scope: Some("friends".into()),
                    ..Default::default()
                },
                "PALAVER_PRESENCE_SCOPE",
            ),
            (
                ServeArgs {
                    presence_tick: Some("20s".into()),
                    ..Default::default()
                },
                "PALAVER_PRESENCE_TICK",
            ),
            (
                ServeArgs {
                    trusted_proxies: Some("10.0.0.0/33".into()),
                    ..Default::default()
                },
                "PALAVER_TRUSTED_PROXIES",
            ),
            (
                ServeArgs {
                    connections_per_address: Some("0".into()),
                    ..Default::default()
                },
                "PALAVER_CONNECTIONS_PER_ADDRESS",
            ),
            (
                ServeArgs {
                    request_head_timeout: Some("2h".into()),
                    ..Default::default()
                },
                "PALAVER_REQUEST_HEAD_TIMEOUT",
            ),
            (
                ServeArgs {
                    registrations_per_address: Some("none".into()),
                    ..Default::default()
                },
                "PALAVER_REGISTRATIONS_PER_ADDRESS",
            ),
            (
                ServeArgs {
                    registration: Some("invite-only".into()),
                    ..Default::default()
                },
                "PALAVER_REGISTRATION",
            ),
            (
                ServeArgs {
                    metrics_listen: Some("9090".into()),
                    ..Default::default()
                },
                "PALAVER_METRICS_LISTEN",
            ),
            (
                ServeArgs {
                    log_format: Some("yaml".into()),
                    ..Default::default()
                },
                "PALAVER_LOG_FORMAT",
            ),
        ];
        for (args, setting) in cases {
            let error = resolve(args).unwrap_err();
            assert_eq!(error.setting, setting, "{error}");
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("palaver.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:4000\"\nsend_burst = 50\nweb = false\ntoken_ttl = \"1h\"\ncors_origins = [\"https://a.example\", \"https://b.example\"]\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            listen: Some("127.0.0.1:5000".into()),
            ..Default::default()
        };
        let config = resolve(args).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(config.send_burst, 50);
        assert!(!config.web);
        assert_eq!(config.token_ttl, Duration::from_secs(3600));
        assert_eq!(
            config.cors_origins,
            vec!["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("palaver.toml");
        std::fs::write(&file, "lisen = \"0.0.0.0:4000\"\n").unwrap();
        let error = resolve(ServeArgs {
            config: Some(file),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(error.setting, "--config");
    }

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(is_loopback_http("http://127.0.0.1:8080/jwks.json"));
        assert!(is_loopback_http("http://localhost/jwks"));
        assert!(is_loopback_http("http://[::1]:9000/k"));
        assert!(!is_loopback_http("http://example.com/jwks"));
        assert!(!is_loopback_http("http://localhost.evil.io/jwks"));
        assert!(!is_loopback_http("https://127.0.0.1/jwks"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3600").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn short_durations_may_be_zero_and_are_capped() {
        let parse =
            |v: &str| parse_short_duration(v, "PALAVER_PRESENCE_GRACE", Duration::from_secs(600));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert!(parse("11m").is_err());
        assert!(parse("5h").is_err());
        assert!(parse("soon").is_err());
    }

    #[test]
    fn an_external_provider_needs_an_audience_or_the_explicit_opt_out() {
        let provider = || ServeArgs {
            auth_jwks: Some("https://idp.example/jwks".into()),
            ..Default::default()
        };
        let error = resolve(provider()).unwrap_err();
        assert_eq!(error.setting, "PALAVER_AUTH_AUDIENCE", "{error}");

        let with_audience = resolve(ServeArgs {
            auth_audience: Some("palaver".into()),
            ..provider()
        })
        .unwrap();
        assert_eq!(
            with_audience.external_auth.unwrap().audience.as_deref(),
            Some("palaver")
        );

        let any = resolve(ServeArgs {
            auth_audience_any: Some("true".into()),
            ..provider()
        })
        .unwrap();
        assert_eq!(any.external_auth.unwrap().audience, None);

        let both = resolve(ServeArgs {
            auth_audience: Some("palaver".into()),
            auth_audience_any: Some("true".into()),
            ..provider()
        })
        .unwrap_err();
        assert_eq!(both.setting, "PALAVER_AUTH_AUDIENCE_ANY", "{both}");
    }

    #[test]
    fn the_secret_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, format!("{}\n", "s".repeat(40))).unwrap();
        let config = resolve(ServeArgs {
            jwt_secret_file: Some(file.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.jwt_secret, Some("s".repeat(40)));

        let both = resolve(ServeArgs {
            jwt_secret: Some("t".repeat(40)),
            jwt_secret_file: Some(file),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(both.setting, "PALAVER_JWT_SECRET_FILE", "{both}");
    }

    #[test]
    fn a_secret_file_is_checked_like_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "short\n").unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        for (path, setting) in [
            (short, "PALAVER_JWT_SECRET"),
            (empty, "PALAVER_JWT_SECRET_FILE"),
            (dir.path().join("missing"), "PALAVER_JWT_SECRET_FILE"),
        ] {
            let error = resolve(ServeArgs {
                jwt_secret_file: Some(path),
                ..Default::default()
            })
            .unwrap_err();
            assert_eq!(error.setting, setting, "{error}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = Config {
            jwt_secret: Some("hunter2".into()),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
