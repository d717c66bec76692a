//! Validation of everything a client writes: account fields and messages.
//!
//! Each function returns the value as it will be stored (trimmed, lower-cased) or the refusal the
//! contract names. Lengths count Unicode scalar values, as the contract says, never bytes.
//!
//! Names are shown next to every message, so they may hold neither control characters nor
//! format characters (Unicode category Cf: bidi overrides and isolates, zero-width joiners and
//! spaces, the BOM), which let one name render as another or as nothing. Message texts keep
//! format characters (emoji sequences need the ZWJ) but lose control characters other than
//! newline and tab (NUL, ESC…), and a text of nothing but white space and format characters is
//! empty.

use unicode_general_category::{GeneralCategory, get_general_category};

use crate::limits::{
    AVATAR_CHARS_MAX, CLIENT_MSG_ID_CHARS_MAX, EMAIL_CHARS_MAX, NAME_CHARS_MAX, PASSWORD_CHARS_MAX,
    PASSWORD_CHARS_MIN,
};

/// Why the fields of a message (its text or idempotency key) do not meet the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("Message is empty")]
    Empty,
    #[error("Message too long")]
    TooLong,
    #[error("clientMsgId must be at most {CLIENT_MSG_ID_CHARS_MAX} characters")]
    ClientMsgIdTooLong,
}

/// A register field that does not meet the contract; the text goes into the 400 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("Name must be 1 to {NAME_CHARS_MAX} characters")]
    Name,
    #[error("Email must be a valid address of at most {EMAIL_CHARS_MAX} characters")]
    Email,
    #[error("Password must be {PASSWORD_CHARS_MIN} to {PASSWORD_CHARS_MAX} characters")]
    Password,
}

/// Whether `c` is a format character (Unicode general category Cf).
pub fn is_format(c: char) -> bool {
    get_general_category(c) == GeneralCategory::Format
}

/// Whether `c` shows nothing on its own: white space or a format character.
fn is_invisible(c: char) -> bool {
    c.is_whitespace() || is_format(c)
}

/// The display name as stored: trimmed, 1–64 characters, no control or format characters.
pub fn name(raw: &str) -> Result<String, FieldError> {
    let trimmed = raw.trim();
    let chars = trimmed.chars().count();
    if chars == 0
        || chars > NAME_CHARS_MAX
        || trimmed.chars().any(|c| c.is_control() || is_format(c))
    {
        return Err(FieldError::Name);
    }
    Ok(trimmed.to_owned())
}

/// The email as stored: lower-case, `local@domain.tld`, no white space, control or format
/// characters (an invisible one would make a look-alike of another address), at most 254
/// characters.
pub fn email(raw: &str) -> Result<String, FieldError> {
    let email = raw.trim().to_lowercase();
    let well_formed = email.chars().count() <= EMAIL_CHARS_MAX
        && !email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_format(c))
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain
                        .split_once('.')
                        .is_some_and(|(host, tld)| !host.is_empty() && !tld.is_empty())
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if well_formed {
        Ok(email)
    } else {
        Err(FieldError::Email)
    }
}

/// Passwords are taken as given (no trimming): 8–128 characters.
pub fn password(raw: &str) -> Result<(), FieldError> {
    let chars = raw.chars().count();
    if (PASSWORD_CHARS_MIN..=PASSWORD_CHARS_MAX).contains(&chars) {
        Ok(())
    } else {
        Err(FieldError::Password)
    }
}

/// A message text as stored: control characters other than newline and tab dropped, trimmed,
/// not made only of white space and format characters, at most `max_chars` scalar values.
pub fn text(raw: &str, max_chars: usize) -> Result<String, MessageError> {
    let kept: String = raw
        .chars()
        .filter(|&c| !c.is_control() || c == '\n' || c == '\t')
        .collect();
    let trimmed = kept.trim();
    if trimmed.chars().all(is_invisible) {
        return Err(MessageError::Empty);
    }
    // Count lazily: a 64 KiB text of ASCII would otherwise be walked to the end.
    if trimmed.chars().nth(max_chars).is_some() {
        return Err(MessageError::TooLong);
    }
    Ok(trimmed.to_owned())
}

/// `http://` on a loopback host (`127.0.0.1…`, `[::1]…`, `localhost…`): a server on this
/// machine (a sidecar or a test), where TLS protects nothing.
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

/// An avatar URL fit to hand to clients, or `None`: `https://` with a host (`http://` only on a
/// loopback host), at most `AVATAR_CHARS_MAX` characters, and nothing a URL may not hold (white
/// space, controls, quotes, angle brackets), so that no `javascript:` or `data:` URL and no
/// attribute-breaking text reaches a client.
pub fn avatar_url(raw: &str) -> Option<&str> {
    let https = raw
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
        && !raw[8..].starts_with(['/', '?', '#'])
        && raw.len() > 8;
    let allowed = (https || is_loopback_http(raw))
        && raw.chars().count() <= AVATAR_CHARS_MAX
        && !raw.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || is_format(c)
                || matches!(
                    c,
                    '"' | '\'' | '<' | '>' | '\\' | '`' | '{' | '}' | '|' | '^'
                )
        });
    allowed.then_some(raw)
}

/// A client's idempotency key: absent or empty means none; otherwise at most 64 characters.
pub fn client_msg_id(raw: Option<&str>) -> Result<Option<String>, MessageError> {
    match raw {
        None | Some("") => Ok(None),
        Some(id) if id.chars().count() <= CLIENT_MSG_ID_CHARS_MAX => Ok(Some(id.to_owned())),
        Some(_) => Err(MessageError::ClientMsgIdTooLong),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(name("  Ada  ").unwrap(), "Ada");
        assert_eq!(name(""), Err(FieldError::Name));
        assert_eq!(name("   "), Err(FieldError::Name));
        assert!(name(&"é".repeat(64)).is_ok());
        assert_eq!(name(&"é".repeat(65)), Err(FieldError::Name));
        assert_eq!(name("a\u{0}b"), Err(FieldError::Name));
    }

    #[test]
    fn names_hold_no_format_characters() {
        for bad in [
            "\u{202E}nimda",        // right-to-left override
            "Ada\u{2066}x\u{2069}", // left-to-right isolate … pop
            "\u{FEFF}Ada",          // a leading BOM
            "\u{200B}\u{200C}\u{200D}",
            "A\u{200D}da",
            "\u{2060}",
            "Ada\u{1B}[31m",
        ] {
            assert_eq!(name(bad), Err(FieldError::Name), "{bad:?}");
        }
        assert_eq!(name("Zoë Ångström").unwrap(), "Zoë Ångström");
        assert_eq!(name("محمد").unwrap(), "محمد");
    }

    #[test]
    fn texts_lose_controls_but_keep_newlines_tabs_and_emoji_joins() {
        assert_eq!(text("a\u{0}b\u{1B}[2Jc", 4000).unwrap(), "ab[2Jc");
        assert_eq!(text("line 1\n\tline 2", 4000).unwrap(), "line 1\n\tline 2");
        assert_eq!(text("a\r\nb\u{7F}\u{9B}", 4000).unwrap(), "a\nb");
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
        assert_eq!(text(family, 4000).unwrap(), family);
        assert_eq!(text("\u{0}\u{1}", 4000), Err(MessageError::Empty));
        assert_eq!(
            text("\u{200B}\u{200D} \u{FEFF}\u{2060}", 4000),
            Err(MessageError::Empty)
        );
        assert_eq!(text("\u{202E}\n\u{0}", 4000), Err(MessageError::Empty));
        // Dropped characters do not count towards the limit.
        assert_eq!(
            text(&format!("{}\u{0}", "a".repeat(5)), 5).unwrap(),
            "aaaaa"
        );
    }

    #[test]
    fn avatars_are_https_or_loopback_http() {
        for good in [
            "https://img.example/a.png",
            "HTTPS://img.example/a.png?s=64",
            "http://127.0.0.1:8080/a.png",
            "http://localhost/a.png",
        ] {
            assert_eq!(avatar_url(good), Some(good), "{good:?}");
        }
        for bad in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:image/png;base64,AAAA",
            "http://img.example/a.png",
            "https://",
            "https:///path",
            "//img.example/a.png",
            "https://img.example/a b.png",
            "https://img.example/\"onerror=\"x",
            "https://img.example/<script>",
            "https://img.example/\u{202E}gnp.exe",
            "",
        ] {
            assert_eq!(avatar_url(bad), None, "{bad:?}");
        }
        let long = format!("https://img.example/{}", "a".repeat(AVATAR_CHARS_MAX));
        assert_eq!(avatar_url(&long), None);
    }

    #[test]
    fn emails_are_lowercased_and_checked() {
        assert_eq!(email(" Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@x.io",
            "ada@x",
            "a b@x.io",
            "a@b@c.io",
            "a@x.",
            "a@.io",
            "a\u{200B}da@x.io",
            "ada@x\u{202E}.io",
        ] {
            assert_eq!(email(bad), Err(FieldError::Email), "{bad:?}");
        }
        let long_local = "a".repeat(250);
        assert!(email(&format!("{long_local}@x.io")).is_err());
        assert!(email(&format!("{}@x.io", "a".repeat(249))).is_ok());
    }

    #[test]
    fn passwords_are_bounded() {
        assert!(password(&"x".repeat(7)).is_err());
        assert!(password(&"x".repeat(8)).is_ok());
        assert!(password(&"x".repeat(128)).is_ok());
        assert!(password(&"x".repeat(129)).is_err());
    }

    #[test]
    fn texts_count_scalar_values() {
        assert_eq!(text("  hi \n", 4000).unwrap(), "hi");
        assert_eq!(text(" \t\n ", 4000), Err(MessageError::Empty));
        assert!(text(&"😀".repeat(4000), 4000).is_ok());
        assert_eq!(text(&"😀".repeat(4001), 4000), Err(MessageError::TooLong));
        assert_eq!(text(&"a".repeat(4001), 4000), Err(MessageError::TooLong));
    }

    #[test]
    fn client_msg_ids_are_optional_and_bounded() {
        assert_eq!(client_msg_id(None), Ok(None));
        assert_eq!(client_msg_id(Some("")), Ok(None));
        assert_eq!(client_msg_id(Some("c-1")), Ok(Some("c-1".into())));
        assert!(client_msg_id(Some(&"x".repeat(64))).is_ok());
        assert_eq!(
            client_msg_id(Some(&"x".repeat(65))),
            Err(MessageError::ClientMsgIdTooLong)
        );
    }

    proptest! {
        #[test]
        fn accepted_text_is_trimmed_nonempty_and_within_limit(raw in ".{0,60}", max in 1usize..50) {
            if let Ok(stored) = text(&raw, max) {
                prop_assert!(!stored.is_empty());
                prop_assert_eq!(stored.trim(), stored.as_str());
                prop_assert!(stored.chars().count() <= max);
            } else {
                let kept: String = raw.chars().filter(|&c| !c.is_control() || c == '\n' || c == '\t').collect();
                let kept = kept.trim();
                prop_assert!(kept.chars().all(is_invisible) || kept.chars().count() > max);
            }
        }

        #[test]
        fn accepted_text_is_visible_and_free_of_controls(
            raw in prop::collection::vec(
                prop_oneof![
                    any::<char>(),
                    Just('\u{0}'), Just('\u{1B}'), Just('\n'), Just('\t'), Just('\r'),
                    Just('\u{200B}'), Just('\u{200D}'), Just('\u{FEFF}'), Just('\u{202E}'), Just(' '),
                ],
                0..40,
            ),
        ) {
            let raw: String = raw.into_iter().collect();
            if let Ok(stored) = text(&raw, 4000) {
                prop_assert!(stored.chars().all(|c| !c.is_control() || c == '\n' || c == '\t'));
                prop_assert!(stored.chars().any(|c| !is_invisible(c)));
                prop_assert_eq!(text(&stored, 4000), Ok(stored.clone()));
            } else {
                prop_assert!(raw.chars().filter(|&c| !c.is_control()).all(is_invisible));
            }
        }

        #[test]
        fn accepted_names_hold_no_control_or_format_characters(
            raw in prop::collection::vec(
                prop_oneof![any::<char>(), Just('\u{200D}'), Just('\u{2066}'), Just('\u{FEFF}'), Just('a')],
                0..70,
            ),
        ) {
            let raw: String = raw.into_iter().collect();
            if let Ok(stored) = name(&raw) {
                prop_assert!(stored.chars().all(|c| !c.is_control() && !is_format(c)));
                prop_assert!((1..=NAME_CHARS_MAX).contains(&stored.chars().count()));
            }
        }

        #[test]
        fn accepted_emails_are_stable(raw in "[a-zA-Z0-9.@ ]{0,30}") {
            if let Ok(stored) = email(&raw) {
                prop_assert_eq!(email(&stored), Ok(stored.clone()));
                prop_assert_eq!(stored.to_lowercase(), stored);
            }
        }
    }
}
