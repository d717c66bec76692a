//! Generation: the plan of a run, made from the seed before the run starts.
//!
//! A plan is plain data: the server's presence scope, the 1:1 chats to open and the groups to
//! create, and for every tab the steps it takes during the safety phase (a think time, then an
//! action: sends, reads, membership changes of its groups...), and the fault schedule
//! (`schedule`). The runner
//! executes a plan; the shrinker removes faults, tabs' steps and single steps from a failing
//! plan and runs it again. A plan is written and read as JSON (`--plan-out`, `--plan`), so a
//! shrunk plan replays from the command line.
//!
//! Actions name chats by their index in the plan: the 1:1 chats first, then the groups (group
//! `g` is chat `chats.len() + g`); membership changes name the group by its own index. The few choices that depend on what the tab
//! holds when it acts (which joined chat to leave) carry a `pick`, resolved against the tab's
//! state at that moment, so a shrunk plan stays valid.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::schedule::{self, Scheduled};

/// Messages a burst emits back to back, without waiting for acks in between.
pub const BURST_MAX: usize = 8;
/// Think time before each step: a tab acts every 0.2 to 3 s.
const THINK_MS: (u64, u64) = (200, 3000);
/// Share of tabs (beyond each user's first) that close for good when the faults end.
const ENDS_OFFLINE: f64 = 0.15;
/// Users a group may ever have (its owner, its first members and those who may be added).
const GROUP_USERS: (usize, usize) = (3, 8);
/// One group per this many users (at least one).
const USERS_PER_GROUP: usize = 4;
/// Share of the steps of a user in some group that change a group's membership or name.
const GROUP_CHANGES: f64 = 0.07;
/// Share of steps that mark a chat read.
const MARK_READS: f64 = 0.06;
/// How far past its last seq a `mark-read` that asks for too much asks (the server caps it).
pub const MARK_BEYOND: u64 = 3;

/// The shape of the world a plan is generated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub users: usize,
    /// Tabs; tab `t` belongs to user `t % users`.
    pub clients: usize,
    /// Length of the safety phase.
    pub duration: Duration,
}

/// Whom the server tells of a user's presence (`PALAVER_PRESENCE_SCOPE`): everyone, or the
/// users who share a chat with them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PresenceScope {
    #[default]
    All,
    Contacts,
}

impl PresenceScope {
    /// The scope of `seed`'s run: one seed in two, drawn from a generator of its own so that
    /// nothing else of the plan depends on it.
    pub fn of_seed(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, "presence scope"));
        if rng.random_bool(0.5) {
            PresenceScope::Contacts
        } else {
            PresenceScope::All
        }
    }

    /// The server's setting.
    pub fn server(self) -> palaver::service::PresenceScope {
        match self {
            PresenceScope::All => palaver::service::PresenceScope::All,
            PresenceScope::Contacts => palaver::service::PresenceScope::Contacts,
        }
    }
}

impl fmt::Display for PresenceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PresenceScope::All => "all",
            PresenceScope::Contacts => "contacts",
        })
    }
}

/// A whole run, before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub users: usize,
    /// The server's presence scope (`all` for a plan written before the scope was drawn).
    #[serde(default)]
    pub presence_scope: PresenceScope,
    /// 1:1 chats between users `a` < `b`, opened by `a`'s first tab.
    pub chats: Vec<ChatPair>,
    /// Groups, created by their owner's first tab during setup (chat `chats.len() + g`).
    pub groups: Vec<GroupPlan>,
    pub tabs: Vec<TabPlan>,
    pub faults: Vec<Scheduled>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatPair {
    pub a: usize,
    pub b: usize,
}

/// A group: its owner never leaves and is never removed (only the owner removes others), so the
/// owner's first tab can always read its history back at the audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPlan {
    pub owner: usize,
    /// The other members it is created with.
    pub members: Vec<usize>,
    /// Users not in it at first whom its steps may add.
    pub candidates: Vec<usize>,
}

impl GroupPlan {
    /// Every user who may ever be a member: the owner, the first members, the candidates.
    pub fn users(&self) -> Vec<usize> {
        let mut users = vec![self.owner];
        users.extend(&self.members);
        users.extend(&self.candidates);
        users
    }

    /// The members it is created with, the owner first.
    pub fn initial(&self) -> Vec<usize> {
        let mut users = vec![self.owner];
        users.extend(&self.members);
        users
    }
}

/// What one tab does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TabPlan {
    pub user: usize,
    /// The user's first tab registers the user and opens the chats the user is `a` of.
    pub registers: bool,
    /// Closes for good when the liveness phase starts (so presence has users going offline).
    pub ends_offline: bool,
    /// The safety phase, in order; a tab that runs out of steps only keeps its connection.
    pub steps: Vec<Step>,
}

/// Think for a while, then act.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub think: Duration,
    pub action: Action,
}

/// How a single message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Via {
    Socket,
    Rest,
}

/// One thing a tab does on purpose. Chats are plan indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// One new message, its ack awaited.
    Send {
        chat: usize,
        via: Via,
    },
    /// New messages emitted back to back on the socket (one per entry, to that chat), each
    /// with its own `clientMsgId`, and only then their acks awaited.
    Burst {
        chats: Vec<usize>,
    },
    /// Resend the oldest send never acknowledged, with its `clientMsgId`.
    RetryPending,
    Type {
        chat: usize,
        typing: bool,
    },
    /// Join one of the user's chats the tab has not joined (`pick` among them).
    Join {
        pick: u32,
    },
    /// Leave one of the chats the tab has joined (`pick` among them).
    Leave {
        pick: u32,
    },
    /// Something the server must refuse.
    Hostile(Hostile),
    /// `GET /api/chats`.
    ListChats,
    /// The newest page of a chat's history over REST.
    ReadHistory {
        chat: usize,
    },
    /// Close the connection (cleanly, or drop it like a killed tab) and stay away a while.
    Disconnect {
        clean: bool,
        back_after: Duration,
    },
    /// Mark a chat read up to the last seq the tab holds without a gap (`beyond`: past it by
    /// [`MARK_BEYOND`], which the server caps at the chat's last seq).
    MarkRead {
        chat: usize,
        via: Via,
        beyond: bool,
    },
    /// A change of group `group` (its own index), over REST; the server refuses what the
    /// user may not do at that moment (not the owner, not a member).
    Group {
        group: usize,
        change: GroupAction,
    },
}

/// A change of a group, as a member (or former member) asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupAction {
    Add {
        user: usize,
    },
    /// Remove `user` (the user's own: leave).
    Remove {
        user: usize,
    },
    Leave,
    Rename {
        name: u32,
    },
}

/// The hostile actions: each must be refused, and a refused send must never appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hostile {
    JoinForeign { chat: usize },
    SyncForeign { chat: usize },
    SendForeign { chat: usize },
    SendEmpty { chat: usize },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Send { chat, via } => write!(f, "send to c{chat} via {via:?}"),
            Action::Burst { chats } => {
                let chats: Vec<String> = chats.iter().map(|c| format!("c{c}")).collect();
                write!(f, "burst to {}", chats.join(","))
            }
            Action::RetryPending => write!(f, "retry a pending send"),
            Action::Type { chat, typing } => write!(f, "typing c{chat} {typing}"),
            Action::Join { pick } => write!(f, "join (pick {pick})"),
            Action::Leave { pick } => write!(f, "leave (pick {pick})"),
            Action::Hostile(hostile) => write!(f, "hostile {hostile:?}"),
            Action::ListChats => write!(f, "list chats"),
            Action::ReadHistory { chat } => write!(f, "read history of c{chat}"),
            Action::Disconnect { clean, back_after } => write!(
                f,
                "{} for {}ms",
                if *clean { "close" } else { "drop" },
                back_after.as_millis()
            ),
            Action::MarkRead { chat, via, beyond } => write!(
                f,
                "mark c{chat} read via {via:?}{}",
                if *beyond { " (beyond)" } else { "" }
            ),
            Action::Group { group, change } => write!(f, "group g{group}: {change:?}"),
        }
    }
}

impl Plan {
    /// The plan indices of user `u`'s chats: the 1:1 chats, and every group the user may ever
    /// be a member of.
    pub fn chats_of(&self, u: usize) -> Vec<usize> {
        chats_of(&self.chats, &self.groups, u)
    }

    /// The chat index of group `g`.
    pub fn group_chat(&self, g: usize) -> usize {
        self.chats.len() + g
    }

    /// Steps over all tabs.
    pub fn step_count(&self) -> usize {
        self.tabs.iter().map(|t| t.steps.len()).sum()
    }

    /// Checks that a plan read from a file fits together: every index names something.
    pub fn validate(&self) -> Result<(), String> {
        if self.users < 2 || self.tabs.len() < self.users {
            return Err("a plan needs two users and a tab per user".into());
        }
        for pair in &self.chats {
            if pair.a >= pair.b || pair.b >= self.users {
                return Err(format!("chat {pair:?} is not a pair of users a < b"));
            }
        }
        for (g, group) in self.groups.iter().enumerate() {
            let users = group.users();
            let distinct: BTreeSet<usize> = users.iter().copied().collect();
            if distinct.len() != users.len() || users.iter().any(|&u| u >= self.users) {
                return Err(format!(
                    "group g{g} names a user twice or one that is not there"
                ));
            }
        }
        for (t, tab) in self.tabs.iter().enumerate() {
            if tab.user != t % self.users || tab.registers != (t < self.users) {
                return Err(format!("tab {t} must belong to user {}", t % self.users));
            }
            let own = self.chats_of(tab.user);
            for step in &tab.steps {
                let (chats, of_user): (Vec<usize>, bool) = match &step.action {
                    Action::Send { chat, .. }
                    | Action::Type { chat, .. }
                    | Action::ReadHistory { chat }
                    | Action::Hostile(Hostile::SendEmpty { chat }) => (vec![*chat], true),
                    Action::Burst { chats } if chats.len() > BURST_MAX => {
                        return Err(format!("t{t} has a burst longer than {BURST_MAX}"));
                    }
                    Action::Burst { chats } => (chats.clone(), true),
                    Action::MarkRead { chat, .. } => (vec![*chat], true),
                    Action::Group { group, change } => {
                        self.validate_change(t, tab.user, *group, *change)?;
                        (Vec::new(), true)
                    }
                    Action::Hostile(
                        Hostile::JoinForeign { chat }
                        | Hostile::SyncForeign { chat }
                        | Hostile::SendForeign { chat },
                    ) => (vec![*chat], false),
                    _ => (Vec::new(), true),
                };
                if let Some(bad) = chats.into_iter().find(|c| own.contains(c) != of_user) {
                    return Err(format!(
                        "t{t} names c{bad}, which is not {} chat of u{}",
                        if of_user { "a" } else { "a foreign" },
                        tab.user
                    ));
                }
            }
        }
        Ok(())
    }

    /// A group change of tab `t` (user `user`) names a group of the user and spares its owner.
    fn validate_change(
        &self,
        t: usize,
        user: usize,
        group: usize,
        change: GroupAction,
    ) -> Result<(), String> {
        let Some(plan) = self.groups.get(group) else {
            return Err(format!("t{t} names group g{group}, which is not there"));
        };
        let users = plan.users();
        let target = match change {
            GroupAction::Add { user } | GroupAction::Remove { user } => Some(user),
            GroupAction::Leave => Some(user),
            GroupAction::Rename { .. } => None,
        };
        if !users.contains(&user) || target.is_some_and(|u| !users.contains(&u)) {
            return Err(format!("t{t}'s change of g{group} names a user outside it"));
        }
        let spares_owner = match change {
            GroupAction::Remove { user } => user != plan.owner,
            GroupAction::Leave => user != plan.owner,
            _ => true,
        };
        if !spares_owner {
            return Err(format!("t{t} would take g{group}'s owner out of it"));
        }
        Ok(())
    }
}

fn chats_of(chats: &[ChatPair], groups: &[GroupPlan], u: usize) -> Vec<usize> {
    let direct = chats
        .iter()
        .enumerate()
        .filter(|(_, c)| c.a == u || c.b == u)
        .map(|(i, _)| i);
    let grouped = groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.users().contains(&u))
        .map(|(g, _)| chats.len() + g);
    direct.chain(grouped).collect()
}

/// A seed derived from the run's seed for one purpose (`salt`), so that each part of a run
/// draws from its own generator.
pub fn mix(seed: u64, salt: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(salt.as_bytes())
        .finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The plan of `seed` for a world of `shape`.
pub fn generate(seed: u64, shape: Shape) -> Plan {
    let mut world_rng = ChaCha8Rng::seed_from_u64(mix(seed, "plan"));
    let chats = plan_chats(shape.users, &mut world_rng);
    let mut group_rng = ChaCha8Rng::seed_from_u64(mix(seed, "plan groups"));
    let groups = plan_groups(shape.users, &mut group_rng);
    let tabs = (0..shape.clients)
        .map(|t| {
            let user = t % shape.users;
            let registers = t < shape.users;
            let ends_offline = !registers && world_rng.random_bool(ENDS_OFFLINE);
            let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, &format!("plan tab {t}")));
            TabPlan {
                user,
                registers,
                ends_offline,
                steps: plan_steps(&chats, &groups, user, shape.duration, &mut rng),
            }
        })
        .collect();
    Plan {
        users: shape.users,
        presence_scope: PresenceScope::of_seed(seed),
        chats,
        groups,
        tabs,
        faults: schedule::generate(seed, shape.clients, shape.users, shape.duration),
    }
}

/// A ring of chats (each user talks to the next) plus a few random extra pairs.
fn plan_chats(users: usize, rng: &mut ChaCha8Rng) -> Vec<ChatPair> {
    let mut pairs = BTreeSet::new();
    for u in 0..users {
        let v = (u + 1) % users;
        pairs.insert((u.min(v), u.max(v)));
    }
    for _ in 0..users / 2 {
        let a = rng.random_range(0..users);
        let b = rng.random_range(0..users);
        if a != b {
            pairs.insert((a.min(b), a.max(b)));
        }
    }
    pairs.into_iter().map(|(a, b)| ChatPair { a, b }).collect()
}

/// Groups of 3 to 8 users (fewer if the world is smaller): an owner, 2 or more first members,
/// and the rest candidates to add.
fn plan_groups(users: usize, rng: &mut ChaCha8Rng) -> Vec<GroupPlan> {
    if users < GROUP_USERS.0 {
        return Vec::new();
    }
    let count = (users / USERS_PER_GROUP).max(1);
    (0..count)
        .map(|_| {
            let size = rng.random_range(GROUP_USERS.0..=GROUP_USERS.1.min(users));
            let mut pool: Vec<usize> = (0..users).collect();
            let mut chosen = Vec::with_capacity(size);
            for _ in 0..size {
                chosen.push(pool.swap_remove(rng.random_range(0..pool.len())));
            }
            let first = rng.random_range(GROUP_USERS.0..=size);
            GroupPlan {
                owner: chosen[0],
                members: chosen[1..first].to_vec(),
                candidates: chosen[first..].to_vec(),
            }
        })
        .collect()
}

/// Steps whose think times alone fill the safety phase: acting takes time too, so a tab does
/// not run out before the phase ends.
fn plan_steps(
    chats: &[ChatPair],
    groups: &[GroupPlan],
    user: usize,
    duration: Duration,
    rng: &mut ChaCha8Rng,
) -> Vec<Step> {
    let own = chats_of(chats, groups, user);
    let all = chats.len() + groups.len();
    let foreign: Vec<usize> = (0..all).filter(|c| !own.contains(c)).collect();
    let own_groups: Vec<usize> = (0..groups.len())
        .filter(|&g| groups[g].users().contains(&user))
        .collect();
    let mut steps = Vec::new();
    let mut thought = Duration::ZERO;
    while thought < duration {
        let think = Duration::from_millis(rng.random_range(THINK_MS.0..=THINK_MS.1));
        thought += think;
        let action = if !own_groups.is_empty() && rng.random_bool(GROUP_CHANGES) {
            let g = pick(&own_groups, rng);
            plan_group_change(g, &groups[g], user, rng)
        } else if rng.random_bool(MARK_READS) {
            Action::MarkRead {
                chat: pick(&own, rng),
                via: if rng.random_bool(0.7) {
                    Via::Socket
                } else {
                    Via::Rest
                },
                beyond: rng.random_bool(0.2),
            }
        } else {
            plan_action(&own, &foreign, rng)
        };
        steps.push(Step { think, action });
    }
    steps
}

/// A change of group `g` by `user`: the owner adds, removes and renames; the others mostly
/// leave, and sometimes try what only the owner may do. Nobody leaves or removes the owner.
fn plan_group_change(g: usize, group: &GroupPlan, user: usize, rng: &mut ChaCha8Rng) -> Action {
    let others: Vec<usize> = group
        .users()
        .into_iter()
        .filter(|&u| u != group.owner)
        .collect();
    let roll: f64 = rng.random();
    let change = if user == group.owner {
        match roll {
            r if r < 0.5 => GroupAction::Add {
                user: pick(&others, rng),
            },
            r if r < 0.85 => GroupAction::Remove {
                user: pick(&others, rng),
            },
            _ => GroupAction::Rename { name: rng.random() },
        }
    } else {
        match roll {
            r if r < 0.4 => GroupAction::Leave,
            r if r < 0.65 => GroupAction::Add {
                user: pick(&others, rng),
            },
            r if r < 0.9 => GroupAction::Remove {
                user: pick(&others, rng),
            },
            _ => GroupAction::Rename { name: rng.random() },
        }
    };
    Action::Group { group: g, change }
}

fn pick(items: &[usize], rng: &mut ChaCha8Rng) -> usize {
    items[rng.random_range(0..items.len())]
}

/// One action, drawn with the mix of a busy user: mostly sends and typing, some bursts,
/// joins and leaves, reads, disconnects, and now and then something hostile.
fn plan_action(own: &[usize], foreign: &[usize], rng: &mut ChaCha8Rng) -> Action {
    let chat = pick(own, rng);
    let roll: f64 = rng.random();
    match roll {
        r if r < 0.37 => Action::Send {
            chat,
            via: Via::Socket,
        },
        r if r < 0.40 => Action::Send {
            chat,
            via: Via::Rest,
        },
        r if r < 0.46 => {
            let count = rng.random_range(2..=BURST_MAX);
            // Half the bursts go to one chat, half spread over the user's chats.
            let spread = rng.random_bool(0.5);
            let chats = (0..count)
                .map(|_| if spread { pick(own, rng) } else { chat })
                .collect();
            Action::Burst { chats }
        }
        r if r < 0.56 => Action::RetryPending,
        r if r < 0.68 => Action::Type {
            chat,
            typing: rng.random_bool(0.7),
        },
        r if r < 0.76 => Action::Join { pick: rng.random() },
        r if r < 0.81 => Action::Leave { pick: rng.random() },
        r if r < 0.85 => {
            let kind = rng.random_range(0..4);
            let hostile = match (kind, foreign.is_empty()) {
                (0, false) => Hostile::JoinForeign {
                    chat: pick(foreign, rng),
                },
                (1, false) => Hostile::SyncForeign {
                    chat: pick(foreign, rng),
                },
                (2, false) => Hostile::SendForeign {
                    chat: pick(foreign, rng),
                },
                _ => Hostile::SendEmpty { chat },
            };
            Action::Hostile(hostile)
        }
        r if r < 0.89 => Action::ListChats,
        r if r < 0.93 => Action::ReadHistory { chat },
        r => Action::Disconnect {
            clean: r < 0.975,
            back_after: Duration::from_millis(rng.random_range(300..=5000)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            users: 8,
            clients: 20,
            duration: Duration::from_secs(40),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        assert_eq!(generate(5, shape()), generate(5, shape()));
        assert_ne!(generate(5, shape()), generate(6, shape()));
    }

    #[test]
    fn a_generated_plan_is_valid_and_survives_json() {
        let plan = generate(9, shape());
        plan.validate().expect("valid");
        assert!(plan.step_count() > 20 * 10, "{} steps", plan.step_count());
        let text = serde_json::to_string(&plan).expect("serializes");
        let back: Plan = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, plan);
    }

    #[test]
    fn groups_have_three_to_eight_users_and_changes_spare_the_owner() {
        let plan = generate(11, shape());
        assert!(!plan.groups.is_empty());
        for group in &plan.groups {
            assert!((3..=8).contains(&group.users().len()), "{group:?}");
            assert!(group.initial().len() >= 3, "{group:?}");
        }
        let changes = plan
            .tabs
            .iter()
            .flat_map(|t| &t.steps)
            .filter(|s| matches!(s.action, Action::Group { .. }))
            .count();
        assert!(changes > 0);
        let mut bad = plan.clone();
        let owner = bad.groups[0].owner;
        bad.tabs[owner].steps[0].action = Action::Group {
            group: 0,
            change: GroupAction::Leave,
        };
        assert!(bad.validate().unwrap_err().contains("owner"));
    }

    #[test]
    fn the_seed_draws_either_scope_and_an_old_plan_reads_as_all() {
        let scopes: BTreeSet<String> = (0..16)
            .map(|seed| PresenceScope::of_seed(seed).to_string())
            .collect();
        assert_eq!(scopes.len(), 2, "16 seeds drew only {scopes:?}");
        assert_eq!(PresenceScope::of_seed(7), PresenceScope::of_seed(7));
        let mut json = serde_json::to_value(generate(9, shape())).expect("serializes");
        json.as_object_mut()
            .expect("an object")
            .remove("presence_scope");
        let old: Plan = serde_json::from_value(json).expect("parses");
        assert_eq!(old.presence_scope, PresenceScope::All);
    }

    #[test]
    fn a_plan_naming_a_missing_chat_is_refused() {
        let mut plan = generate(9, shape());
        plan.tabs[3].steps[0].action = Action::ReadHistory { chat: 999 };
        assert!(
            plan.validate().unwrap_err().contains("c999"),
            "{:?}",
            plan.validate()
        );
    }
}
