//! Group membership: who may change a group, and what a change leaves.
//!
//! A chat's members are kept in the order they joined, so the longest-standing member is always
//! the first. A group's owner is that first member: the creator at first, and when the owner
//! leaves or is removed, the member who has been in the group longest takes over, with nothing
//! else to record. Only the owner adds members, removes others and renames the group; any member
//! removes themself (leaves). A 1:1 chat (`direct`) refuses every change. A group holds at most
//! [`CHAT_MEMBERS_MAX`] members, and one add names at most [`MEMBERS_PER_ADD_MAX`] users. When
//! the last member leaves, the chat is kept, reachable by nobody.

use crate::limits::{CHAT_MEMBERS_MAX, GROUP_NAME_CHARS_MAX, MEMBERS_PER_ADD_MAX};

use super::validate;

/// A member's standing in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }
}

/// What a system message records: a membership change or a rename. Stored (postcard, by
/// variant index: append new kinds at the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SystemKind {
    /// `user` was added by `by`.
    Added,
    /// `user` was removed by `by` (the owner).
    Removed,
    /// `user` left (`by` is `user`).
    Left,
    /// `by` renamed the group (`user` is `by`).
    Renamed,
}

impl SystemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SystemKind::Added => "added",
            SystemKind::Removed => "removed",
            SystemKind::Left => "left",
            SystemKind::Renamed => "renamed",
        }
    }
}

/// The text of a system message, from the names of the users involved and, for a rename, the
/// new name.
pub fn describe(kind: SystemKind, user_name: &str, by_name: &str, group_name: &str) -> String {
    match kind {
        SystemKind::Added => format!("{by_name} added {user_name}"),
        SystemKind::Removed => format!("{by_name} removed {user_name}"),
        SystemKind::Left => format!("{user_name} left"),
        SystemKind::Renamed => format!("{by_name} renamed the group to {group_name}"),
    }
}

/// Why a membership change (or a group's creation) was refused. The `Display` text is what the
/// client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// No such chat, or the caller is not a member: the same answer, so nothing is revealed.
    #[error("Chat not found")]
    NotMember,
    #[error("Not a group chat")]
    NotGroup,
    #[error("Only the owner can do that")]
    NotOwner,
    #[error("A group has at most {CHAT_MEMBERS_MAX} members")]
    TooManyMembers,
    #[error("Member not found")]
    NotAMember,
    /// An id to add names no user.
    #[error("User not found")]
    UnknownUser,
}

/// The group's name as stored: trimmed, 1–64 characters, no control or format characters (the
/// rules of a user's name, with its own message).
pub fn group_name(raw: &str) -> Result<String, NameError> {
    validate::name(raw).map_err(|_| NameError)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Group name must be 1 to {GROUP_NAME_CHARS_MAX} characters")]
pub struct NameError;

/// The user ids of one add or creation: 1 to `MEMBERS_PER_ADD_MAX` for an add (0 allowed for a
/// creation), deduplicated in order; `None` when the count is out of bounds.
pub fn bounded_ids(ids: Vec<String>, allow_empty: bool) -> Option<Vec<String>> {
    if ids.len() > MEMBERS_PER_ADD_MAX || (ids.is_empty() && !allow_empty) {
        return None;
    }
    let mut unique: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    Some(unique)
}

/// The role of `user` in a chat whose members (in joining order) are `members`; `None` when
/// not a member. Both members of a direct chat are plain members.
pub fn role_of(members: &[String], user: &str, is_group: bool) -> Option<Role> {
    let position = members.iter().position(|m| m == user)?;
    Some(if is_group && position == 0 {
        Role::Owner
    } else {
        Role::Member
    })
}

/// The group's owner: its longest-standing member, `None` once everyone left.
pub fn owner(members: &[String]) -> Option<&str> {
    members.first().map(String::as_str)
}

/// The users of `wanted` that an add by `by` brings in (those already members are skipped), or
/// why it is refused.
pub fn plan_add(
    members: &[String],
    is_group: bool,
    by: &str,
    wanted: &[String],
) -> Result<Vec<String>, MembershipError> {
    authorize_owner(members, is_group, by)?;
    let new: Vec<String> = wanted
        .iter()
        .filter(|id| !members.contains(id))
        .cloned()
        .collect();
    if members.len() + new.len() > CHAT_MEMBERS_MAX {
        return Err(MembershipError::TooManyMembers);
    }
    Ok(new)
}

/// Checks that `by` may remove `target` (the owner removes anyone; a member removes themself).
pub fn check_remove(
    members: &[String],
    is_group: bool,
    by: &str,
    target: &str,
) -> Result<(), MembershipError> {
    if !members.iter().any(|m| m == by) {
        return Err(MembershipError::NotMember);
    }
    if !is_group {
        return Err(MembershipError::NotGroup);
    }
    if by != target && owner(members) != Some(by) {
        return Err(MembershipError::NotOwner);
    }
    if !members.iter().any(|m| m == target) {
        return Err(MembershipError::NotAMember);
    }
    Ok(())
}

/// Checks that `by` may rename the chat (its owner, and only of a group).
pub fn check_rename(members: &[String], is_group: bool, by: &str) -> Result<(), MembershipError> {
    authorize_owner(members, is_group, by)
}

fn authorize_owner(members: &[String], is_group: bool, by: &str) -> Result<(), MembershipError> {
    if !members.iter().any(|m| m == by) {
        return Err(MembershipError::NotMember);
    }
    if !is_group {
        return Err(MembershipError::NotGroup);
    }
    if owner(members) != Some(by) {
        return Err(MembershipError::NotOwner);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_first_member_of_a_group_owns_it() {
        let members = ids(&["a", "b", "c"]);
        assert_eq!(role_of(&members, "a", true), Some(Role::Owner));
        assert_eq!(role_of(&members, "b", true), Some(Role::Member));
        assert_eq!(role_of(&members, "a", false), Some(Role::Member));
        assert_eq!(role_of(&members, "z", true), None);
    }

    #[test]
    fn only_the_owner_adds_renames_and_removes_others() {
        let members = ids(&["a", "b", "c"]);
        assert_eq!(
            plan_add(&members, true, "a", &ids(&["b", "d"])),
            Ok(ids(&["d"]))
        );
        assert_eq!(
            plan_add(&members, true, "b", &ids(&["d"])),
            Err(MembershipError::NotOwner)
        );
        assert_eq!(
            plan_add(&members, true, "z", &ids(&["d"])),
            Err(MembershipError::NotMember)
        );
        assert_eq!(check_rename(&members, true, "a"), Ok(()));
        assert_eq!(
            check_rename(&members, true, "c"),
            Err(MembershipError::NotOwner)
        );
        assert_eq!(check_remove(&members, true, "a", "c"), Ok(()));
        assert_eq!(
            check_remove(&members, true, "b", "c"),
            Err(MembershipError::NotOwner)
        );
        assert_eq!(
            check_remove(&members, true, "b", "b"),
            Ok(()),
            "anyone leaves"
        );
        assert_eq!(
            check_remove(&members, true, "a", "z"),
            Err(MembershipError::NotAMember)
        );
    }

    #[test]
    fn direct_chats_refuse_every_change() {
        let members = ids(&["a", "b"]);
        assert_eq!(
            plan_add(&members, false, "a", &ids(&["c"])),
            Err(MembershipError::NotGroup)
        );
        assert_eq!(
            check_remove(&members, false, "a", "a"),
            Err(MembershipError::NotGroup)
        );
        assert_eq!(
            check_rename(&members, false, "a"),
            Err(MembershipError::NotGroup)
        );
        assert_eq!(
            check_remove(&members, false, "z", "a"),
            Err(MembershipError::NotMember),
            "outsiders learn nothing, not even the kind"
        );
    }

    #[test]
    fn a_group_holds_at_most_its_bound() {
        let members: Vec<String> = (0..CHAT_MEMBERS_MAX - 1).map(|i| format!("u{i}")).collect();
        assert_eq!(
            plan_add(&members, true, "u0", &ids(&["x"])),
            Ok(ids(&["x"]))
        );
        assert_eq!(
            plan_add(&members, true, "u0", &ids(&["x", "y"])),
            Err(MembershipError::TooManyMembers)
        );
    }

    #[test]
    fn ids_per_add_are_bounded_and_deduplicated() {
        assert_eq!(
            bounded_ids(ids(&["a", "b", "a"]), false),
            Some(ids(&["a", "b"]))
        );
        assert_eq!(bounded_ids(vec![], false), None);
        assert_eq!(bounded_ids(vec![], true), Some(vec![]));
        let many: Vec<String> = (0..=MEMBERS_PER_ADD_MAX).map(|i| format!("u{i}")).collect();
        assert_eq!(bounded_ids(many.clone(), true), None);
        assert!(bounded_ids(many[..MEMBERS_PER_ADD_MAX].to_vec(), false).is_some());
    }

    #[test]
    fn group_names_follow_the_name_rules() {
        assert_eq!(group_name("  Team  ").as_deref(), Ok("Team"));
        assert!(group_name("").is_err());
        assert!(group_name(&"x".repeat(GROUP_NAME_CHARS_MAX + 1)).is_err());
        assert!(group_name(&"é".repeat(GROUP_NAME_CHARS_MAX)).is_ok());
        assert!(group_name("a\u{202e}b").is_err());
    }

    proptest! {
        /// Whatever sequence of adds and leaves, the owner is always the longest-standing
        /// member: the one who joined earliest among those still in.
        #[test]
        fn ownership_passes_to_the_longest_standing_member(
            steps in prop::collection::vec((any::<bool>(), 0usize..8), 0..60)
        ) {
            let mut members = ids(&["u0"]);
            let mut joined_at = std::collections::HashMap::from([("u0".to_string(), 0usize)]);
            for (step, (add, who)) in steps.into_iter().enumerate() {
                let user = format!("u{who}");
                let Some(current_owner) = owner(&members).map(str::to_owned) else { break };
                if add {
                    if let Ok(new) = plan_add(&members, true, &current_owner, std::slice::from_ref(&user)) {
                        for id in new {
                            joined_at.insert(id.clone(), step + 1);
                            members.push(id);
                        }
                    }
                } else if check_remove(&members, true, &user, &user).is_ok() {
                    members.retain(|m| *m != user);
                }
                if let Some(owner) = owner(&members) {
                    let earliest = members.iter().min_by_key(|m| joined_at[*m]).unwrap();
                    prop_assert_eq!(owner, earliest.as_str());
                    prop_assert_eq!(role_of(&members, owner, true), Some(Role::Owner));
                }
            }
        }
    }
}
