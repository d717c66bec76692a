//! Validation of everything a client writes: account fields and messages.
//!
//! Each function returns the value as it will be stored (trimmed, lower-cased) or the refusal the
//! contract names. Lengths count Unicode scalar values, as the contract says, never bytes.

use crate::limits::{
    CLIENT_MSG_ID_CHARS_MAX, EMAIL_CHARS_MAX, NAME_CHARS_MAX, PASSWORD_CHARS_MAX,
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

/// The display name as stored: trimmed, 1–64 characters, no control characters.
pub fn name(raw: &str) -> Result<String, FieldError> {
    let trimmed = raw.trim();
    let chars = trimmed.chars().count();
    if chars == 0 || chars > NAME_CHARS_MAX || trimmed.chars().any(char::is_control) {
        return Err(FieldError::Name);
    }
    Ok(trimmed.to_owned())
}

/// The email as stored: lower-case, `local@domain.tld`, no white space, at most 254 characters.
pub fn email(raw: &str) -> Result<String, FieldError> {
    let email = raw.trim().to_lowercase();
    let well_formed = email.chars().count() <= EMAIL_CHARS_MAX
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
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

/// A message text as stored: trimmed, non-empty, at most `max_chars` scalar values.
pub fn text(raw: &str, max_chars: usize) -> Result<String, MessageError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(MessageError::Empty);
    }
    // Count lazily: a 64 KiB text of ASCII would otherwise be walked to the end.
    if trimmed.chars().nth(max_chars).is_some() {
        return Err(MessageError::TooLong);
    }
    Ok(trimmed.to_owned())
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
    fn emails_are_lowercased_and_checked() {
        assert_eq!(email(" Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in [
            "", "ada", "ada@", "@x.io", "ada@x", "a b@x.io", "a@b@c.io", "a@x.", "a@.io",
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
                prop_assert!(raw.trim().is_empty() || raw.trim().chars().count() > max);
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
