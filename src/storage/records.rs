//! The records palaver keeps on disk, and their encoding.
//!
//! Every record value is one format-version byte followed by the record in postcard (through
//! serde). postcard has a documented, stable wire format; the version byte lets a later release
//! read old records and lets this one refuse records it does not understand instead of
//! misreading them. Decoding never panics and never allocates more than the input implies.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use crate::domain::membership::SystemKind;

/// The record encoding this build writes. Bump it when a record's shape changes, and keep the
/// decoder for every older version.
pub const RECORD_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub name: String,
    /// Lower-case; unique.
    pub email: String,
    pub avatar: String,
    /// argon2id PHC string; `None` for users of the external identity provider.
    pub password_hash: Option<String>,
    /// The external provider's `sub`; unique when present.
    pub external_id: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRecord {
    pub id: String,
    /// The current members' user ids in the order they joined (the creator first, an added
    /// member last): a group's owner is the first (see `domain::membership`).
    pub members: Vec<String>,
    pub created_ms: u64,
    /// The seq of the newest message; 0 while the chat is empty.
    pub last_seq: u64,
    /// When the newest message was committed, or `created_ms` while empty.
    pub last_message_ms: u64,
}

impl ChatRecord {
    pub fn has_member(&self, user: &str) -> bool {
        self.members.iter().any(|m| m == user)
    }
}

/// What makes a chat a group (a chat without one is a 1:1 chat): its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
}

/// A group member's own fields (1:1 chats have none: their members joined at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub joined_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemEvent {
    pub kind: SystemKind,
    pub user: String,
    pub by: String,
}

/// The system message at a seq (its text and sender are in the message record there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemRecord {
    pub event: SystemEvent,
    /// The chat's system messages at or below this seq, this one included: what the unread
    /// counts subtract (see `domain::reads`).
    pub systems_through: u64,
}

/// How far a member has read a chat (see `domain::reads::ReadPosition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRecord {
    pub last_read_seq: u64,
    /// The chat's non-system messages at or below `last_read_seq`.
    pub counted: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: String,
    pub chat: String,
    pub seq: u64,
    pub sender: String,
    pub text: String,
    pub client_msg_id: Option<String>,
    pub created_ms: u64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    /// An index names the record, but it is not there.
    #[error("missing, though an index names it")]
    Missing,
    #[error("record format version {0} is newer than this build understands ({RECORD_VERSION})")]
    UnknownVersion(u8),
    #[error("malformed record: {0}")]
    Malformed(String),
}

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut bytes = vec![RECORD_VERSION];
    // Serialising our own structs to a Vec cannot fail: postcard only fails on unsupported
    // serde features (none used) or a full fixed buffer (not this sink).
    bytes.extend(postcard::to_stdvec(record).expect("record serialises"));
    bytes
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&RECORD_VERSION, body)) => {
            let (record, rest) = postcard::take_from_bytes(body)
                .map_err(|e| DecodeError::Malformed(e.to_string()))?;
            if rest.is_empty() {
                Ok(record)
            } else {
                Err(DecodeError::Malformed(format!(
                    "{} trailing bytes",
                    rest.len()
                )))
            }
        }
        Some((&version, _)) => Err(DecodeError::UnknownVersion(version)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message() -> MessageRecord {
        MessageRecord {
            id: "65f0000000000000000000aa".into(),
            chat: "c1".into(),
            seq: 17,
            sender: "u1".into(),
            text: "héllo 😀".into(),
            client_msg_id: Some("c-123".into()),
            created_ms: 1_795_635_442_123,
        }
    }

    #[test]
    fn round_trips_and_leads_with_the_version() {
        let bytes = encode(&message());
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<MessageRecord>(&bytes).unwrap(), message());
    }

    #[test]
    fn refuses_unknown_versions_and_garbage() {
        let mut bytes = encode(&message());
        bytes[0] = RECORD_VERSION + 1;
        assert_eq!(
            decode::<MessageRecord>(&bytes),
            Err(DecodeError::UnknownVersion(2))
        );
        assert_eq!(decode::<MessageRecord>(&[]), Err(DecodeError::Empty));
        assert!(decode::<MessageRecord>(&[RECORD_VERSION, 0xff, 0xff]).is_err());
        let mut long = encode(&message());
        long.push(0);
        assert!(matches!(
            decode::<MessageRecord>(&long),
            Err(DecodeError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode::<MessageRecord>(&bytes);
            let _ = decode::<UserRecord>(&bytes);
            let _ = decode::<ChatRecord>(&bytes);
            let _ = decode::<GroupRecord>(&bytes);
            let _ = decode::<MemberRecord>(&bytes);
            let _ = decode::<SystemRecord>(&bytes);
            let _ = decode::<ReadRecord>(&bytes);
        }

        #[test]
        fn system_records_round_trip(kind in 0u8..4, through in any::<u64>(), user in "[a-z0-9]{1,24}") {
            let kind = [SystemKind::Added, SystemKind::Removed, SystemKind::Left, SystemKind::Renamed][kind as usize];
            let record = SystemRecord {
                event: SystemEvent { kind, user: user.clone(), by: user },
                systems_through: through,
            };
            prop_assert_eq!(decode::<SystemRecord>(&encode(&record)).unwrap(), record);
        }

        #[test]
        fn messages_round_trip(text in ".{0,50}", seq in any::<u64>(), cmid in proptest::option::of("[a-z0-9-]{0,64}")) {
            let record = MessageRecord { text, seq, client_msg_id: cmid, ..message() };
            prop_assert_eq!(decode::<MessageRecord>(&encode(&record)).unwrap(), record);
        }
    }
}
