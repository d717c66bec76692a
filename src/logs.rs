//! Logging: the format (`--log-format text|json`) and the filter, which is `RUST_LOG` as given
//! except that the Socket.IO layer stays at `info`.
//!
//! JSON lines are tracing-subscriber's: `timestamp`, `level`, `target`, `fields` (the
//! `message` and the event's other fields) and the spans the event happened in, one object a
//! line, for a log shipper to read without parsing text.
//!
//! At `debug`, socketioxide logs every handshake's `auth` object (the whole bearer token) and
//! engineioxide every packet (message texts). Either would put credentials and private messages
//! into the logs of an operator who only wanted palaver's own debug output, so both crates are
//! capped at `info` unless `RUST_LOG` names them itself (`RUST_LOG=debug,socketioxide=debug`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the process's log subscriber, writing to standard output in `format`, filtered by
/// `RUST_LOG` (`None` when unset; see [`filter`]).
pub fn init(format: LogFormat, rust_log: Option<&str>) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter(rust_log));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The level used when `RUST_LOG` is unset or empty.
const DEFAULT_DIRECTIVES: &str = "info";
/// Crates that log secrets or message contents below `info`.
const QUIET_CRATES: [&str; 2] = ["socketioxide", "engineioxide"];

/// The directives for `RUST_LOG` (`None` when unset): the given ones, or `info`, followed by
/// `<crate>=info` for each quiet crate the given ones do not name.
pub fn directives(rust_log: Option<&str>) -> String {
    let given = rust_log.map(str::trim).filter(|s| !s.is_empty());
    let mut directives = given.unwrap_or(DEFAULT_DIRECTIVES).to_owned();
    for name in QUIET_CRATES {
        if !given.is_some_and(|given| names_crate(given, name)) {
            directives.push_str(&format!(",{name}=info"));
        }
    }
    directives
}

/// Whether one of the comma-separated `directives` is about `name` (its target starts with it).
fn names_crate(directives: &str, name: &str) -> bool {
    directives
        .split(',')
        .map(|directive| directive.trim().trim_start_matches('['))
        .any(|directive| directive.starts_with(name))
}

/// The filter for `RUST_LOG` (`None` when unset). A value that does not parse is reported on
/// standard error and the default filter is used.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    EnvFilter::try_new(directives(rust_log)).unwrap_or_else(|error| {
        eprintln!("palaver: RUST_LOG is not a valid filter ({error}); logging at info");
        EnvFilter::new(directives(None))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;

    /// Whether an event at `level` for `target` passes the filter built from `rust_log`.
    fn passes(rust_log: Option<&str>, target_is_socketioxide: bool, level: Level) -> bool {
        let subscriber = tracing_subscriber::registry().with(filter(rust_log));
        tracing::subscriber::with_default(subscriber, || match (target_is_socketioxide, level) {
            (true, Level::DEBUG) => tracing::enabled!(target: "socketioxide::client", Level::DEBUG),
            (true, _) => tracing::enabled!(target: "socketioxide::client", Level::INFO),
            (false, Level::DEBUG) => tracing::enabled!(target: "palaver::server", Level::DEBUG),
            (false, _) => tracing::enabled!(target: "palaver::server", Level::INFO),
        })
    }

    #[test]
    fn debug_everywhere_keeps_the_socket_io_crates_at_info() {
        assert_eq!(
            directives(Some("debug")),
            "debug,socketioxide=info,engineioxide=info"
        );
        assert!(passes(Some("debug"), false, Level::DEBUG));
        assert!(!passes(Some("debug"), true, Level::DEBUG));
        assert!(passes(Some("debug"), true, Level::INFO));
    }

    #[test]
    fn naming_a_crate_explicitly_lets_it_log_at_that_level() {
        assert_eq!(
            directives(Some("debug,socketioxide=debug")),
            "debug,socketioxide=debug,engineioxide=info"
        );
        assert!(passes(Some("debug,socketioxide=debug"), true, Level::DEBUG));
        assert_eq!(
            directives(Some("engineioxide::socket=trace")),
            "engineioxide::socket=trace,socketioxide=info"
        );
    }

    #[test]
    fn unset_or_empty_is_info() {
        assert_eq!(directives(None), "info,socketioxide=info,engineioxide=info");
        assert_eq!(directives(Some("  ")), directives(None));
        assert!(!passes(None, false, Level::DEBUG));
        assert!(passes(None, false, Level::INFO));
    }
}
