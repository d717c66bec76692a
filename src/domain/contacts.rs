//! Contacts: who sees whose presence when presence is scoped to contacts (the users who share a
//! chat), kept for the users the presence count needs them for.
//!
//! An entry is loaded from storage when a user connects and forgotten once the user is gone
//! and announced offline, so the map holds only connected (or leaving) users. An entry lists
//! loaded users only, and contacts are mutual: learning a user adds it to the lists of its
//! loaded contacts, forgetting it takes it out of them, and an introduction changes both
//! entries or neither (a user loaded later reads the chat from storage). Every user with a
//! socket or announced online is loaded, so nothing is lost; and one side never announces to,
//! or lists in a snapshot, a user who no longer hears of it: a contact that outlived the chats
//! two users shared (one left a group) ends on both sides as soon as either is announced
//! offline, and a user taken out of a group while offline is nobody's contact there when it
//! comes back. Loading reads storage, which is not done under the presence lock; a chat created
//! meanwhile would be missing from the loaded list, so every introduction bumps a generation,
//! and a list loaded while the generation moved is loaded again ([`Contacts::generation`]).

use std::collections::{HashMap, HashSet};

#[derive(Debug, Default)]
pub struct Contacts {
    of: HashMap<String, HashSet<String>>,
    introductions: u64,
}

/// Which sides of an introduction learned something new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Introduced {
    /// The first user now knows the second.
    pub first_learned: bool,
    /// The second user now knows the first.
    pub second_learned: bool,
}

impl Contacts {
    /// Moves with every introduction (see the module's docs).
    pub fn generation(&self) -> u64 {
        self.introductions
    }

    /// Whether `user`'s contacts are loaded.
    pub fn knows(&self, user: &str) -> bool {
        self.of.contains_key(user)
    }

    /// Keeps `user`'s contacts as loaded from storage, those loaded only (the user left out),
    /// and adds `user` to their lists (see the module's docs).
    pub fn learn(&mut self, user: &str, mut contacts: HashSet<String>) {
        contacts.retain(|contact| contact != user && self.of.contains_key(contact));
        for contact in &contacts {
            if let Some(theirs) = self.of.get_mut(contact) {
                theirs.insert(user.to_owned());
            }
        }
        self.of.insert(user.to_owned(), contacts);
    }

    /// The contacts of `user`, if loaded.
    pub fn of(&self, user: &str) -> Option<&HashSet<String>> {
        self.of.get(user)
    }

    /// Two users now share a chat. Both entries change when both are loaded, neither otherwise
    /// (an entry loaded later reads the chat from storage).
    pub fn introduce(&mut self, first: &str, second: &str) -> Introduced {
        self.introductions += 1;
        if first == second || !self.knows(first) || !self.knows(second) {
            return Introduced::default();
        }
        let mut learn = |who: &str, whom: &str| {
            self.of
                .get_mut(who)
                .is_some_and(|contacts| contacts.insert(whom.to_owned()))
        };
        Introduced {
            first_learned: learn(first, second),
            second_learned: learn(second, first),
        }
    }

    /// Users whose contacts are loaded.
    pub fn users(&self) -> impl Iterator<Item = &String> {
        self.of.keys()
    }

    /// Drops `user`'s contacts, and `user` from the lists of its loaded contacts (see the
    /// module's docs).
    pub fn forget(&mut self, user: &str) {
        let Some(contacts) = self.of.remove(user) else {
            return;
        };
        for contact in contacts {
            if let Some(theirs) = self.of.get_mut(&contact) {
                theirs.remove(user);
            }
        }
    }

    /// How many users' contacts are loaded.
    pub fn len(&self) -> usize {
        self.of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    #[test]
    fn introductions_change_both_loaded_entries_or_neither_and_move_the_generation() {
        let mut contacts = Contacts::default();
        contacts.learn("ada", set(&["ada"]));
        assert_eq!(
            contacts.of("ada"),
            Some(&set(&[])),
            "never one's own contact"
        );
        let before = contacts.generation();
        assert_eq!(contacts.introduce("ada", "cy"), Introduced::default());
        assert!(
            contacts.generation() > before,
            "a load of Cy under way reads again"
        );
        assert_eq!(contacts.of("ada"), Some(&set(&[])), "Cy is not loaded");
        contacts.learn("cy", set(&[]));
        assert_eq!(
            contacts.introduce("ada", "cy"),
            Introduced {
                first_learned: true,
                second_learned: true
            }
        );
        assert_eq!(contacts.of("ada"), Some(&set(&["cy"])));
        assert_eq!(contacts.of("cy"), Some(&set(&["ada"])));
        assert_eq!(contacts.introduce("cy", "ada"), Introduced::default());
        contacts.forget("ada");
        contacts.forget("cy");
        assert!(contacts.is_empty());
    }

    #[test]
    fn a_contact_ends_on_both_sides_when_either_is_forgotten() {
        let mut contacts = Contacts::default();
        // Ada and Bob shared a group that Bob left: both lists still hold the other.
        contacts.learn("ada", set(&["bob", "cy"]));
        contacts.learn("bob", set(&["ada"]));
        contacts.learn("cy", set(&["ada"]));
        assert_eq!(contacts.of("ada"), Some(&set(&["bob", "cy"])));
        // Bob went offline; back, he shares no chat with Ada any more.
        contacts.forget("bob");
        assert_eq!(contacts.of("ada"), Some(&set(&["cy"])));
        contacts.learn("bob", set(&[]));
        assert_eq!(contacts.of("ada"), Some(&set(&["cy"])));
        // Ada went offline; back, she still shares a chat with Cy, who knows her again.
        contacts.forget("ada");
        assert_eq!(contacts.of("cy"), Some(&set(&[])));
        contacts.learn("ada", set(&["cy"]));
        assert_eq!(contacts.of("cy"), Some(&set(&["ada"])));
    }

    #[test]
    fn a_list_holds_loaded_users_only() {
        let mut contacts = Contacts::default();
        // Ada loads while Bob, a member of her group, is offline; he is taken out of the group
        // before he comes back, so his own list (from storage) no longer names her.
        contacts.learn("ada", set(&["bob"]));
        assert_eq!(contacts.of("ada"), Some(&set(&[])));
        contacts.learn("bob", set(&[]));
        assert_eq!(
            contacts.of("ada"),
            Some(&set(&[])),
            "Bob is not Ada's contact"
        );
    }
}
