//! Configuration: command-line flags, then environment variables, then an optional TOML file
//! (`--config`), then built-in defaults. Everything is validated once, at start; a bad value
//! stops the start with a message naming the setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::limits::{
    JWT_SECRET_BYTES_MIN, SEND_BURST_CEILING, SEND_RATE_CEILING, SOCKETS_PER_USER_CEILING,
    SOCKETS_PER_USER_DEFAULT, TEXT_CHARS_CEILING, TEXT_CHARS_DEFAULT, TOKEN_TTL_DEFAULT,
    TOKEN_TTL_MAX,
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
    #[arg(long, env = "PALAVER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
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
    /// Required `aud` of external tokens.
    #[arg(long, env = "PALAVER_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
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
    /// Sockets one user may have open at once; one more is refused at the handshake.
    #[arg(long, env = "PALAVER_MAX_SOCKETS_PER_USER")]
    pub max_sockets_per_user: Option<String>,
}

/// The same settings as read from a TOML file. Numbers may be written as numbers or strings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    jwt_secret: Option<String>,
    token_ttl: Option<toml::Value>,
    cors_origins: Option<toml::Value>,
    auth_public_key: Option<String>,
    auth_jwks: Option<String>,
    auth_issuer: Option<String>,
    auth_audience: Option<String>,
    send_rate_per_sec: Option<toml::Value>,
    send_burst: Option<toml::Value>,
    max_text_chars: Option<toml::Value>,
    web: Option<toml::Value>,
    max_sockets_per_user: Option<toml::Value>,
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
    pub max_sockets_per_user: u32,
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
            .field("max_sockets_per_user", &self.max_sockets_per_user)
            .finish()
    }
}

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
            max_sockets_per_user: SOCKETS_PER_USER_DEFAULT,
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
        config.jwt_secret = args
            .jwt_secret
            .or(file.jwt_secret)
            .filter(|s| !s.is_empty());
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
        if let Some(web) = text(args.web, file.web) {
            config.web = parse_bool(&web, "PALAVER_WEB")?;
        }
        if let Some(max) = text(args.max_sockets_per_user, file.max_sockets_per_user) {
            config.max_sockets_per_user = parse_positive(
                &max,
                "PALAVER_MAX_SOCKETS_PER_USER",
                SOCKETS_PER_USER_CEILING,
            )?;
        }
        config.external_auth = external_auth(
            args.auth_public_key.or(file.auth_public_key),
            args.auth_jwks.or(file.auth_jwks),
            args.auth_issuer.or(file.auth_issuer),
            args.auth_audience.or(file.auth_audience),
        )?;
        Ok(config)
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

fn parse_bool(value: &str, setting: &'static str) -> Result<bool, ConfigError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(setting, format!("{value:?} must be true or false"))),
    }
}

/// `http://127.0.0.1…`, `http://[::1]…` or `http://localhost…`: a provider on this machine (a
/// sidecar or a test), where TLS protects nothing.
pub fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn external_auth(
    public_key: Option<String>,
    jwks: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
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
    let audience = audience.filter(|s| !s.is_empty());
    if keys.is_empty() {
        if issuer.is_some() || audience.is_some() {
            return Err(bad(
                "PALAVER_AUTH_ISSUER",
                "issuer/audience are set but neither PALAVER_AUTH_PUBLIC_KEY nor PALAVER_AUTH_JWKS is",
            ));
        }
        return Ok(None);
    }
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
    fn secrets_stay_out_of_debug_output() {
        let config = Config {
            jwt_secret: Some("hunter2".into()),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
