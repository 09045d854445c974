//! Checks every raft message from the network before raft-rs sees it.
//!
//! raft-rs trusts its peers: some inputs that a correct member never sends make it panic
//! (an empty proposal, a heartbeat whose commit index lies beyond the log, an append whose
//! previous entry is claimed at term 0 far past the log, a read-index request without its
//! context entry) or corrupt its progress tracking (an acknowledgement of entries the leader
//! does not have). A member must survive anything that reaches its peer port, so such a
//! message is dropped here, with a log line, instead.
//!
//! Invariants:
//! - only message types one member sends another pass (never the local ones: `MsgHup`,
//!   `MsgBeat`, `MsgUnreachable`, `MsgSnapStatus`, `MsgCheckQuorum`);
//! - the sender is another member and the message is addressed here. A leader's messages
//!   (appends, heartbeats, snapshots, leadership transfer) and vote requests may come from a
//!   member this one does not know yet: a member that joined the running cluster, or is
//!   catching up, learns the configuration from the log the leader sends it. Removed members
//!   never get this far: the transport answers their traffic with 410 Gone. Every other kind
//!   must come from a member of the applied configuration;
//! - a forwarded proposal carries client requests or a single-member configuration change
//!   (never a joint-consensus one, which oxcd does not use);
//! - every check holds for every message a correct member sends, whatever the timing, so the
//!   checks never cost liveness (the deterministic cluster tests drive every message
//!   through them).

use raft::prelude::{EntryType, Message, MessageType};

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A type only raft itself creates.
    #[error("message type is not sent between members")]
    LocalType,
    /// Not addressed to this member.
    #[error("addressed to another member")]
    NotForUs,
    /// The sender is not a current member (or claims to be us).
    #[error("sender is not a member of the cluster")]
    UnknownSender,
    /// A proposal without entries, or with an entry no member forwards.
    #[error("malformed proposal")]
    BadProposal,
    /// A read-index request or answer without exactly one context entry.
    #[error("read index without its context entry")]
    BadReadIndex,
    /// Appended entries that are not consecutive, or whose terms are impossible.
    #[error("append with inconsistent entries")]
    BadEntries,
    /// An append whose previous entry lies beyond the log at term 0.
    #[error("append of an entry beyond the log at term 0")]
    BadPrevious,
    /// A commit index beyond this member's log.
    #[error("commit index beyond the log")]
    CommitBeyondLog,
    /// An acknowledgement of entries the leader does not have.
    #[error("acknowledges entries beyond the log")]
    AckBeyondLog,
    /// A term no cluster reaches (2^62 elections), which raft's `term + 1` could overflow.
    #[error("implausible term")]
    ImplausibleTerm,
}

/// Terms at or above this are refused: even an election every millisecond would take
/// a hundred million years to get here, and raft-rs adds one to terms unchecked.
pub const MAX_TERM: u64 = 1 << 62;

/// Whether to log another dropped message now: at most once a second, so a flood of
/// garbage does not turn into a flood of log lines.
pub fn log_allowed(last: &mut Option<std::time::Instant>) -> bool {
    let now = std::time::Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
        return false;
    }
    *last = Some(now);
    true
}

/// What the check needs to know of this member.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    /// This member's ID.
    pub id: u64,
    /// The index of the last entry of this member's log.
    pub last_index: u64,
}

/// Checks a message received from a peer; `is_member` tells whether an ID is a current
/// voter or learner.
pub fn check(m: &Message, local: Local, is_member: impl Fn(u64) -> bool) -> Result<(), Refusal> {
    use MessageType::*;
    match m.get_msg_type() {
        MsgHup | MsgBeat | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum => {
            return Err(Refusal::LocalType)
        }
        _ => {}
    }
    if m.to != local.id {
        return Err(Refusal::NotForUs);
    }
    let from_leader_or_candidate = matches!(
        m.get_msg_type(),
        MsgAppend | MsgHeartbeat | MsgSnapshot | MsgTimeoutNow | MsgRequestVote | MsgRequestPreVote
    );
    if m.from == local.id || m.from == 0 || (!from_leader_or_candidate && !is_member(m.from)) {
        return Err(Refusal::UnknownSender);
    }
    if m.term >= MAX_TERM || m.log_term >= MAX_TERM {
        return Err(Refusal::ImplausibleTerm);
    }
    match m.get_msg_type() {
        MsgPropose => {
            // raft-rs panics on an empty proposal. Members forward client requests and
            // membership changes, one voter added or removed at a time.
            let ok = !m.entries.is_empty()
                && m.entries.iter().all(|e| match e.get_entry_type() {
                    EntryType::EntryNormal => !e.data.is_empty(),
                    EntryType::EntryConfChange => {
                        <raft::prelude::ConfChange as protobuf::Message>::parse_from_bytes(&e.data)
                            .is_ok_and(|cc| {
                                cc.get_change_type()
                                    != raft::prelude::ConfChangeType::AddLearnerNode
                            })
                    }
                    EntryType::EntryConfChangeV2 => false,
                });
            if !ok {
                return Err(Refusal::BadProposal);
            }
        }
        MsgReadIndex | MsgReadIndexResp if m.entries.len() != 1 => {
            return Err(Refusal::BadReadIndex);
        }
        MsgAppend => {
            // A leader sends the entries after (index, log_term), consecutive, each no newer
            // than the message's term, terms never decreasing.
            let mut want = m.index;
            let mut term = m.log_term;
            for e in m.entries.iter() {
                want = want.checked_add(1).ok_or(Refusal::BadEntries)?;
                if e.index != want || e.term == 0 || e.term < term || e.term > m.term {
                    return Err(Refusal::BadEntries);
                }
                term = e.term;
            }
            if m.log_term > m.term {
                return Err(Refusal::BadEntries);
            }
            // Every entry but the (index 0, term 0) origin has a term of at least 1: raft-rs
            // reads an index beyond the log as term 0, so such an append would "match" and
            // move the commit index past the log.
            if m.index > local.last_index && m.log_term == 0 {
                return Err(Refusal::BadPrevious);
            }
        }
        // A leader's heartbeat carries min(its commit, what this member acknowledged).
        MsgHeartbeat if m.commit > local.last_index => {
            return Err(Refusal::CommitBeyondLog);
        }
        // A follower acknowledges only entries the leader sent it.
        MsgAppendResponse if !m.reject && m.index > local.last_index => {
            return Err(Refusal::AckBeyondLog);
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::field_reassign_with_default)]
    use super::*;
    use raft::prelude::Entry;

    const LOCAL: Local = Local {
        id: 1,
        last_index: 10,
    };

    fn msg(t: MessageType) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.to = 1;
        m.from = 2;
        m.term = 5;
        m
    }

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = b"x".to_vec().into();
        e
    }

    fn members(id: u64) -> bool {
        (1..=3).contains(&id)
    }

    #[test]
    fn ordinary_messages_pass() {
        let mut app = msg(MessageType::MsgAppend);
        app.index = 10;
        app.log_term = 4;
        app.commit = 10;
        app.entries = vec![entry(11, 4), entry(12, 5)].into();
        assert_eq!(check(&app, LOCAL, members), Ok(()));
        // A probe beyond the log at a real term is answered with a rejection by raft.
        app.index = 50;
        app.entries = Vec::new().into();
        assert_eq!(check(&app, LOCAL, members), Ok(()));
        let mut hb = msg(MessageType::MsgHeartbeat);
        hb.commit = 10;
        assert_eq!(check(&hb, LOCAL, members), Ok(()));
        let mut prop = msg(MessageType::MsgPropose);
        prop.entries = vec![entry(0, 0)].into();
        assert_eq!(check(&prop, LOCAL, members), Ok(()));
        let mut resp = msg(MessageType::MsgAppendResponse);
        resp.index = 10;
        assert_eq!(check(&resp, LOCAL, members), Ok(()));
        resp.index = 99;
        resp.reject = true;
        assert_eq!(check(&resp, LOCAL, members), Ok(()));
        for t in [
            MessageType::MsgRequestVote,
            MessageType::MsgRequestPreVote,
            MessageType::MsgRequestVoteResponse,
            MessageType::MsgHeartbeatResponse,
            MessageType::MsgTimeoutNow,
            MessageType::MsgSnapshot,
        ] {
            assert_eq!(check(&msg(t), LOCAL, members), Ok(()), "{t:?}");
        }
    }

    /// The forged messages that made raft-rs panic, and their relatives.
    #[test]
    fn forged_messages_are_refused() {
        assert_eq!(
            check(&msg(MessageType::MsgPropose), LOCAL, members),
            Err(Refusal::BadProposal)
        );
        let mut hb = msg(MessageType::MsgHeartbeat);
        hb.commit = 1_000_000;
        assert_eq!(check(&hb, LOCAL, members), Err(Refusal::CommitBeyondLog));
        let mut app = msg(MessageType::MsgAppend);
        app.index = 1 << 62;
        app.log_term = 0;
        assert_eq!(check(&app, LOCAL, members), Err(Refusal::BadPrevious));
        let mut app = msg(MessageType::MsgAppend);
        app.index = u64::MAX;
        app.log_term = 1;
        app.entries = vec![entry(0, 1)].into();
        assert_eq!(check(&app, LOCAL, members), Err(Refusal::BadEntries));
        let mut gap = msg(MessageType::MsgAppend);
        gap.index = 3;
        gap.log_term = 2;
        gap.entries = vec![entry(4, 2), entry(6, 2)].into();
        assert_eq!(check(&gap, LOCAL, members), Err(Refusal::BadEntries));
        let mut future = msg(MessageType::MsgAppend);
        future.entries = vec![entry(1, 9)].into();
        assert_eq!(check(&future, LOCAL, members), Err(Refusal::BadEntries));
        assert_eq!(
            check(&msg(MessageType::MsgReadIndex), LOCAL, members),
            Err(Refusal::BadReadIndex)
        );
        let mut ack = msg(MessageType::MsgAppendResponse);
        ack.index = 11;
        assert_eq!(check(&ack, LOCAL, members), Err(Refusal::AckBeyondLog));
        // A configuration change that does not decode, a learner, a joint change.
        let mut cc = msg(MessageType::MsgPropose);
        let mut e = entry(0, 0);
        e.set_entry_type(EntryType::EntryConfChange);
        e.data = vec![0xff, 0xff].into();
        cc.entries = vec![e.clone()].into();
        assert_eq!(check(&cc, LOCAL, members), Err(Refusal::BadProposal));
        let mut learner = raft::prelude::ConfChange::default();
        learner.set_change_type(raft::prelude::ConfChangeType::AddLearnerNode);
        e.data = protobuf::Message::write_to_bytes(&learner).unwrap().into();
        cc.entries = vec![e.clone()].into();
        assert_eq!(check(&cc, LOCAL, members), Err(Refusal::BadProposal));
        e.set_entry_type(EntryType::EntryConfChangeV2);
        cc.entries = vec![e].into();
        assert_eq!(check(&cc, LOCAL, members), Err(Refusal::BadProposal));
        for t in [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
        ] {
            assert_eq!(check(&msg(t), LOCAL, members), Err(Refusal::LocalType));
        }
        let mut huge = msg(MessageType::MsgRequestVote);
        huge.term = u64::MAX;
        assert_eq!(check(&huge, LOCAL, members), Err(Refusal::ImplausibleTerm));
        for t in [
            MessageType::MsgAppendResponse,
            MessageType::MsgHeartbeatResponse,
            MessageType::MsgRequestVoteResponse,
            MessageType::MsgTransferLeader,
        ] {
            let mut stranger = msg(t);
            stranger.from = 9;
            assert_eq!(
                check(&stranger, LOCAL, members),
                Err(Refusal::UnknownSender),
                "{t:?}"
            );
        }
        // A leader this member does not know yet (it is catching up on the configuration).
        let mut leader = msg(MessageType::MsgHeartbeat);
        leader.from = 9;
        assert_eq!(check(&leader, LOCAL, members), Ok(()));
        let mut prop = msg(MessageType::MsgPropose);
        let mut e = entry(0, 0);
        e.set_entry_type(EntryType::EntryConfChange);
        let mut add = raft::prelude::ConfChange::default();
        add.node_id = 4;
        e.data = protobuf::Message::write_to_bytes(&add).unwrap().into();
        prop.entries = vec![e].into();
        assert_eq!(check(&prop, LOCAL, members), Ok(()));
        let mut myself = msg(MessageType::MsgHeartbeat);
        myself.from = 1;
        assert_eq!(check(&myself, LOCAL, members), Err(Refusal::UnknownSender));
        let mut elsewhere = msg(MessageType::MsgHeartbeat);
        elsewhere.to = 3;
        assert_eq!(check(&elsewhere, LOCAL, members), Err(Refusal::NotForUs));
    }
}
