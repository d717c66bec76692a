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
    let state = model.state.borrow();
    let user_of = |id: &str| state.users.iter().position(|u| u.id.as_deref() == Some(id));
    let mut found = Vec::new();

    // 1. Durability: every acknowledged message, same id and seq.
    for ((user, cmid), send) in &state.sends {
        let Some((id, seq)) = send.acked() else {
            continue;
        };
        let Some(history) = histories.get(&send.chat) else {
            continue;
        };
        let present = history.iter().any(|m| m.id == id && m.seq == seq);
        if !present {
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
