//! The contract's JSON field names for the service's objects.
//!
//! The service hands out plain data (`service::views`); this is the one place that says how each
//! object is spelled on the wire. The names follow the seed application (`_id`, `createdAt`, …)
//! so its clients work unchanged.

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::service::views::{ChatView, MessageView, PublicUser, UserView};

impl Serialize for UserView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_struct("User", 6)?;
        object.serialize_field("_id", &self.id)?;
        object.serialize_field("name", &self.name)?;
        object.serialize_field("email", &self.email)?;
        object.serialize_field("avatar", &self.avatar)?;
        object.serialize_field("createdAt", &self.created_at)?;
        object.serialize_field("updatedAt", &self.updated_at)?;
        object.end()
    }
}

impl Serialize for PublicUser {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_struct("PublicUser", 4)?;
        object.serialize_field("_id", &self.id)?;
        object.serialize_field("name", &self.name)?;
        object.serialize_field("email", &self.email)?;
        object.serialize_field("avatar", &self.avatar)?;
        object.end()
    }
}

impl Serialize for MessageView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_struct("Message", 8)?;
        object.serialize_field("_id", &self.id)?;
        object.serialize_field("chat", &self.chat)?;
        object.serialize_field("sender", &self.sender)?;
        object.serialize_field("text", &self.text)?;
        object.serialize_field("seq", &self.seq)?;
        object.serialize_field("clientMsgId", &self.client_msg_id)?;
        object.serialize_field("createdAt", &self.created_at)?;
        object.serialize_field("updatedAt", &self.updated_at)?;
        object.end()
    }
}

impl Serialize for ChatView {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_struct("Chat", 6)?;
        object.serialize_field("_id", &self.id)?;
        object.serialize_field("participant", &self.participant)?;
        object.serialize_field("participants", &self.participants)?;
        object.serialize_field("lastMessage", &self.last_message)?;
        object.serialize_field("lastMessageAt", &self.last_message_at)?;
        object.serialize_field("createdAt", &self.created_at)?;
        object.end()
    }
}
