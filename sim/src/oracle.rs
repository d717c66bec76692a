//! The oracle: the invariants of the issue, checked against what the simulation recorded.
//!
//! Some are checked as events happen (in `tab` and `model`): exactly once (5), authorization
//! (6), presence alternation (8), and the binding of each `(chat, seq)` to one message (3).
//! This module checks the rest:
//! - at every server boot, on the recovered database before the server accepts a connection:
//!   every acknowledged message is there with its `_id` and `seq` (1), nothing is there that
//!   no client sent or that was refused (2), seqs are 1..n (3), no `(sender, clientMsgId)`
//!   twice (4);
//! - at the end, the same on the history read back over REST, plus convergence (7: every
//!   connected client's view equals history) and presence (8: every connected client sees
//!   online exactly the users with a connected client).

use std::collections::{BTreeMap, BTreeSet};

use palaver::storage::Store;

use crate::model::{Invariant, MessageFacts, Model};

/// Checks the database a boot recovered, before it serves.
pub fn check_recovered(store: &Store, model: &Model, boot: u32) {
    let when = format!("after boot {boot}");
    match store.check_consistency() {
        Ok(problems) => {
            for problem in problems {
                model.violate(
                    Invariant::SeqContiguous,
                    format!("{when}: storage inconsistent: {problem}"),
                );
            }
        }
        Err(error) => model.violate(
            Invariant::Contract,
            format!("{when}: consistency check failed: {error}"),
        ),
    }
    let chat_ids: Vec<String> = model
        .state
        .borrow()
        .chats
        .iter()
        .filter_map(|c| c.id.clone())
        .collect();
    let mut histories = BTreeMap::new();
    for chat in chat_ids {
        let last_seq = match store.chat(&chat) {
            Ok(Some(record)) => record.last_seq,
            Ok(None) => {
                model.violate(
                    Invariant::Durability,
                    format!("{when}: chat {} is gone", model.chat_label(&chat)),
                );
                continue;
            }
            Err(error) => {
                model.violate(Invariant::Contract, format!("{when}: {error}"));
                continue;
            }
        };
        match store.messages(&chat, 1..last_seq + 1) {
            Ok(records) => {
                let facts = records
                    .into_iter()
                    .map(|m| MessageFacts {
                        id: m.id,
                        chat: m.chat,
                        seq: m.seq,
                        sender: m.sender,
                        text: m.text,
                        client_msg_id: m.client_msg_id,
                    })
                    .collect::<Vec<_>>();
                histories.insert(chat, facts);
            }
            Err(error) => model.violate(Invariant::Contract, format!("{when}: {error}")),
        }
    }
    check_histories(model, &histories, &when);
}

/// The end-of-run checks on the history read back at the audit and on the clients' reports.
pub fn final_check(model: &Model) {
    let histories = model.state.borrow().histories.clone();
    let chats: Vec<String> = model
        .state
        .borrow()
        .chats
        .iter()
        .filter_map(|c| c.id.clone())
        .collect();
    for chat in &chats {
        if !histories.contains_key(chat) {
            model.violate(
                Invariant::Convergence,
                format!("history of {} was never read back", model.chat_label(chat)),
            );
        }
    }
    check_histories(model, &histories, "at the end");
    check_convergence(model, &histories);
    check_presence(model);
}

/// Invariants 1–4 on one reading of every chat's history.
fn check_histories(model: &Model, histories: &BTreeMap<String, Vec<MessageFacts>>, when: &str) {
    let mut found = Vec::new();
    let mut lost = Vec::new();
    let state = model.state.borrow();
    let user_of = |id: &str| state.users.iter().position(|u| u.id.as_deref() == Some(id));

    // 1. Durability: every acknowledged message, same id and seq (each loss reported once).
    for ((user, cmid), send) in &state.sends {
        let Some((id, seq)) = send.acked() else {
            continue;
        };
        let Some(history) = histories.get(&send.chat) else {
            continue;
        };
        let present = history.iter().any(|m| m.id == id && m.seq == seq);
        if !present && !state.lost.contains(&(*user, cmid.clone())) {
            lost.push((*user, cmid.clone()));
            let now_at = history.iter().find(|m| m.seq == seq).map(|m| m.id.as_str());
            found.push((
                Invariant::Durability,
                format!(
                    "{when}: u{user}'s acknowledged {cmid} (id {id}, seq {seq}) is missing; seq {seq} holds {now_at:?}"
                ),
            ));
        }
    }

    for (chat, history) in histories {
        let label = chat_label(&state.chats, chat);
        // 3. Seqs are exactly 1..n.
        for (i, message) in history.iter().enumerate() {
            if message.seq != i as u64 + 1 {
                found.push((
                    Invariant::SeqContiguous,
                    format!(
                        "{when}: {label} has seq {} at position {} (seqs {:?})",
                        message.seq,
                        i + 1,
                        history.iter().map(|m| m.seq).collect::<Vec<_>>()
                    ),
                ));
                break;
            }
        }
        // 4. Idempotency: one entry per (sender, clientMsgId).
        let mut keys = BTreeSet::new();
        for message in history {
            if let Some(cmid) = &message.client_msg_id
                && !keys.insert((message.sender.clone(), cmid.clone()))
            {
                found.push((
                    Invariant::Idempotency,
                    format!(
                        "{when}: {label} holds {cmid} of {} twice (seq {})",
                        message.sender, message.seq
                    ),
                ));
            }
        }
        // 2. No phantoms: each message was sent by a client, to this chat, with this text, and
        // not definitely refused.
        for message in history {
            let user = user_of(&message.sender);
            let send = match (&message.client_msg_id, user) {
                (Some(cmid), Some(user)) => state.sends.get(&(user, cmid.clone())),
                _ => None,
            };
            let problem = match send {
                None => Some("no client sent it".to_owned()),
                Some(send) if send.chat != *chat || send.text != message.text => Some(format!(
                    "it was sent as {:?} to another chat or text",
                    send.text
                )),
                Some(send) if !send.valid => {
                    Some(format!("it had to be refused ({:?})", send.attempts))
                }
                Some(send) if !send.may_exist() => {
                    Some(format!("every attempt was refused ({:?})", send.attempts))
                }
                Some(_) => None,
            };
            if let Some(problem) = problem {
                found.push((
                    Invariant::NoPhantoms,
                    format!(
                        "{when}: {label} seq {} ({:?}, {:?}): {problem}",
                        message.seq, message.client_msg_id, message.text
                    ),
                ));
            }
        }
    }
    drop(state);
    model.state.borrow_mut().lost.extend(lost);
    for (invariant, detail) in found {
        model.violate(invariant, detail);
    }
}

fn chat_label(chats: &[crate::model::ChatSlot], id: &str) -> String {
    match chats.iter().position(|c| c.id.as_deref() == Some(id)) {
        Some(i) => format!("c{i}"),
        None => format!("c?{id}"),
    }
}

/// 7. Every connected client's view of each of its chats equals history.
fn check_convergence(model: &Model, histories: &BTreeMap<String, Vec<MessageFacts>>) {
    let state = model.state.borrow();
    let mut found = Vec::new();
    for (tab, status) in state.tabs.iter().enumerate() {
        if status.ends_offline {
            continue;
        }
        let Some(report) = &status.report else {
            found.push(format!("t{tab} never reported"));
            continue;
        };
        if !report.connected {
            found.push(format!("t{tab} is not connected at the end"));
            continue;
        }
        for (chat, view) in &report.views {
            let Some(history) = histories.get(chat) else {
                continue;
            };
            let label = chat_label(&state.chats, chat);
            let expected: BTreeMap<u64, &MessageFacts> =
                history.iter().map(|m| (m.seq, m)).collect();
            let missing: Vec<u64> = expected
                .keys()
                .filter(|seq| !view.contains_key(seq))
                .copied()
                .collect();
            let extra: Vec<u64> = view
                .keys()
                .filter(|seq| !expected.contains_key(seq))
                .copied()
                .collect();
            let different: Vec<u64> = view
                .iter()
                .filter(|(seq, m)| expected.get(seq).is_some_and(|h| *h != *m))
                .map(|(seq, _)| *seq)
                .collect();
            if !missing.is_empty() || !extra.is_empty() || !different.is_empty() {
                found.push(format!(
                    "t{tab}'s view of {label} differs from history: missing seqs {missing:?}, extra {extra:?}, different {different:?}"
                ));
            }
        }
    }
    drop(state);
    for detail in found {
        model.violate(Invariant::Convergence, detail);
    }
}

/// 8. Every connected client sees online exactly the other users with a connected client.
fn check_presence(model: &Model) {
    let state = model.state.borrow();
    let online_users: BTreeSet<String> = state
        .tabs
        .iter()
        .filter_map(|status| status.report.as_ref())
        .filter(|report| report.connected)
        .filter_map(|report| state.users[report.user].id.clone())
        .collect();
    let label = |ids: &BTreeSet<String>| -> Vec<String> {
        ids.iter()
            .map(
                |id| match state.users.iter().position(|u| u.id.as_ref() == Some(id)) {
                    Some(u) => format!("u{u}"),
                    None => format!("u?{id}"),
                },
            )
            .collect()
    };
    let mut found = Vec::new();
    for (tab, status) in state.tabs.iter().enumerate() {
        let Some(report) = status.report.as_ref().filter(|r| r.connected) else {
            continue;
        };
        let own = state.users[report.user].id.clone().unwrap_or_default();
        let mut expected = online_users.clone();
        expected.remove(&own);
        let mut seen = report.online.clone();
        seen.remove(&own);
        if seen != expected {
            let missing: BTreeSet<String> = expected.difference(&seen).cloned().collect();
            let extra: BTreeSet<String> = seen.difference(&expected).cloned().collect();
            found.push(format!(
                "t{tab} (u{}) sees online {:?}; missing {:?}, extra {:?}",
                report.user,
                label(&seen),
                label(&missing),
                label(&extra)
            ));
        }
    }
    drop(state);
    for detail in found {
        model.violate(Invariant::Presence, detail);
    }
}

#[cfg(test)]
mod tests {
    //! The checks that no planted bug exercises (phantoms, idempotency, convergence) and the
    //! others, on hand-made records: each must fire on its violation and stay quiet otherwise.

    use super::*;
    use crate::model::{Attempt, ChatSlot, SendRecord, TabReport, UserSlot};
    use crate::trace::Trace;

    fn model() -> Model {
        let users = (0..2)
            .map(|u| UserSlot {
                id: Some(format!("user{u}")),
                ..UserSlot::default()
            })
            .collect();
        let chats = vec![ChatSlot {
            a: 0,
            b: 1,
            id: Some("chat".into()),
            audit_tab: Some(0),
        }];
        Model::new(Trace::new(false), users, chats, 2)
    }

    fn message(seq: u64, cmid: &str) -> MessageFacts {
        MessageFacts {
            id: format!("id-{cmid}"),
            chat: "chat".into(),
            seq,
            sender: "user0".into(),
            text: format!("text-{cmid}"),
            client_msg_id: Some(cmid.into()),
        }
    }

    fn sent(model: &Model, cmid: &str, valid: bool, attempt: Attempt) {
        model.state.borrow_mut().sends.insert(
            (0, cmid.into()),
            SendRecord {
                user: 0,
                chat: "chat".into(),
                text: format!("text-{cmid}"),
                valid,
                attempts: vec![attempt],
            },
        );
    }

    fn acked(seq: u64, cmid: &str) -> Attempt {
        Attempt::Acked {
            id: format!("id-{cmid}"),
            seq,
        }
    }

    fn violated(model: &Model, history: Vec<MessageFacts>) -> Vec<Invariant> {
        let histories = BTreeMap::from([("chat".to_owned(), history)]);
        check_histories(model, &histories, "test");
        model
            .state
            .borrow()
            .violations
            .iter()
            .map(|v| v.invariant)
            .collect()
    }

    #[test]
    fn a_consistent_history_passes() {
        let model = model();
        sent(&model, "a", true, acked(1, "a"));
        sent(&model, "b", true, Attempt::Unknown("ack timeout".into()));
        assert!(violated(&model, vec![message(1, "a"), message(2, "b")]).is_empty());
    }

    #[test]
    fn a_lost_acknowledged_message_breaks_durability() {
        let model = model();
        sent(&model, "a", true, acked(1, "a"));
        assert_eq!(violated(&model, vec![]), vec![Invariant::Durability]);
    }

    #[test]
    fn an_acknowledged_message_at_another_seq_breaks_durability() {
        let model = model();
        sent(&model, "a", true, Attempt::Unknown("closed".into()));
        sent(&model, "b", true, acked(1, "b"));
        assert_eq!(
            violated(&model, vec![message(1, "a"), message(2, "b")]),
            vec![Invariant::Durability]
        );
    }

    #[test]
    fn unsent_refused_and_hostile_messages_are_phantoms() {
        let model = model();
        sent(
            &model,
            "refused",
            true,
            Attempt::Refused("Rate limited".into()),
        );
        sent(
            &model,
            "hostile",
            false,
            Attempt::Refused("Chat not found".into()),
        );
        let history = vec![
            message(1, "never-sent"),
            message(2, "refused"),
            message(3, "hostile"),
        ];
        assert_eq!(violated(&model, history), vec![Invariant::NoPhantoms; 3]);
    }

    #[test]
    fn a_gap_breaks_seq_order() {
        let model = model();
        sent(&model, "a", true, acked(1, "a"));
        sent(&model, "b", true, acked(3, "b"));
        assert_eq!(
            violated(&model, vec![message(1, "a"), message(3, "b")]),
            vec![Invariant::SeqContiguous]
        );
    }

    #[test]
    fn one_client_msg_id_twice_breaks_idempotency() {
        let model = model();
        sent(&model, "a", true, Attempt::Unknown("closed".into()));
        let mut again = message(2, "a");
        again.id = "id-a-again".into();
        assert_eq!(
            violated(&model, vec![message(1, "a"), again]),
            vec![Invariant::Idempotency]
        );
    }

    #[test]
    fn two_messages_at_one_seq_break_seq_order() {
        let model = model();
        model.observe(&message(1, "a"), "test");
        model.observe(&message(1, "a"), "test");
        assert!(model.state.borrow().violations.is_empty());
        model.observe(&message(1, "b"), "test");
        let violations = model.state.borrow().violations.clone();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].invariant, Invariant::SeqContiguous);
    }

    fn report(user: usize, views: Vec<MessageFacts>, online: &[&str]) -> TabReport {
        TabReport {
            user,
            connected: true,
            views: BTreeMap::from([(
                "chat".to_owned(),
                views.into_iter().map(|m| (m.seq, m)).collect(),
            )]),
            online: online.iter().map(|u| (*u).to_owned()).collect(),
        }
    }

    #[test]
    fn a_view_that_differs_from_history_breaks_convergence() {
        let model = model();
        let history = vec![message(1, "a"), message(2, "b")];
        {
            let mut state = model.state.borrow_mut();
            state.tabs[0].report = Some(report(0, history.clone(), &[]));
            state.tabs[1].report = Some(report(1, vec![message(1, "a")], &[]));
        }
        let histories = BTreeMap::from([("chat".to_owned(), history)]);
        check_convergence(&model, &histories);
        let violations = model.state.borrow().violations.clone();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].invariant, Invariant::Convergence);
        assert!(violations[0].detail.starts_with("t1"));
    }

    #[test]
    fn presence_must_match_the_connected_users() {
        let model = model();
        {
            let mut state = model.state.borrow_mut();
            state.tabs[0].report = Some(report(0, vec![], &["user1"]));
            state.tabs[1].report = Some(report(1, vec![], &[]));
        }
        check_presence(&model);
        let violations = model.state.borrow().violations.clone();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].invariant, Invariant::Presence);
        assert!(violations[0].detail.starts_with("t1"));
    }
}
