//! A node removed from the cluster before it heard of it: how it finds out, and goes quiet.
//!
//! When `ordo cluster members` drops a node, the leader may stop replicating to it before the
//! entry that removes it arrives. That node then still believes it is a voter, hears no
//! leader, and campaigns for ever, its term climbing (the others ignore it: openraft's leader
//! lease). So each node answers a vote request from a node outside its own membership, once
//! it has applied that membership, with `x-ordo-not-a-member: INDEX`, the log index of that
//! membership (`vote_answer_notice`). The
//! candidate takes the notice only if that membership is newer than its own
//! (`RemovalWatch`): membership entries are ordered by index, so a newer one without this
//! node means it was removed, while a node that merely lags behind this node's own addition
//! holds an older one and is ignored. A removed node then stops campaigning (through
//! `ElectionHold`, the one owner of openraft's election switch), says so once in its log, and
//! keeps serving stale reads. If it is added again, the leader's replication brings a newer
//! membership that includes it, and it campaigns again.

use std::sync::{Arc, Mutex};

use super::election_hold::ElectionHold;
use crate::raft::{NodeId, Raft};

/// Response header on a vote answer: the candidate is not in the answering node's membership,
/// whose log index is the value.
pub const NOT_A_MEMBER_HEADER: &str = "x-ordo-not-a-member";

/// The notice for a vote answer to `candidate`, if it is outside this node's membership:
/// that membership's log index.
pub fn vote_answer_notice(raft: &Raft, candidate: NodeId) -> Option<u64> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let membership = &m.membership_config;
    let member = membership
        .membership()
        .nodes()
        .any(|(id, _)| *id == candidate);
    notice(
        member,
        membership.log_id().map(|l| l.index),
        m.last_applied.map(|l| l.index),
    )
}

/// The rule of `vote_answer_notice`: a membership without the candidate, once this node has
/// applied it. The membership a node acts on is its newest, committed or not, and one that
/// is not may yet be replaced by a leader that never had it: the candidate, told it was
/// removed, would stop campaigning for good while it is still a voter, and with a peer down
/// and its own log the longest, no one else could win an election. (Applied implies
/// committed; the notice waits at most an apply.)
fn notice(
    candidate_is_member: bool,
    membership_index: Option<u64>,
    applied: Option<u64>,
) -> Option<u64> {
    match (candidate_is_member, membership_index) {
        (false, Some(index)) if applied.is_some_and(|a| a >= index) => Some(index),
        _ => None,
    }
}

/// The newest not-a-member notice a peer sent this node: (peer, its membership's index).
#[derive(Default)]
pub struct RemovalNotices {
    latest: Mutex<Option<(NodeId, u64)>>,
    changed: tokio::sync::Notify,
}

impl RemovalNotices {
    /// Called by the peer client on a vote answer carrying the header.
    pub fn record(&self, from: NodeId, membership_index: u64) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        if latest.is_none_or(|(_, index)| membership_index > index) {
            *latest = Some((from, membership_index));
            self.changed.notify_one();
        }
    }

    fn latest(&self) -> Option<(NodeId, u64)> {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Decides, from the notices and this node's own membership, whether it was removed.
pub struct RemovalWatch {
    id: NodeId,
    raft: Raft,
    notices: Arc<RemovalNotices>,
    hold: Arc<ElectionHold>,
}

impl RemovalWatch {
    pub fn spawn(id: NodeId, raft: Raft, notices: Arc<RemovalNotices>, hold: Arc<ElectionHold>) {
        let watch = RemovalWatch {
            id,
            raft,
            notices,
            hold,
        };
        tokio::spawn(watch.run());
    }

    async fn run(self) {
        // The server metrics change only with the vote, the role, the leader or the
        // membership; the full metrics change several times per write.
        let mut metrics = self.raft.server_metrics();
        let mut removed_by: Option<(NodeId, u64)> = None;
        // The removing entry did reach this node: openraft keeps a non-member from
        // campaigning by itself; only say why.
        let mut said_not_member = false;
        loop {
            let (own_index, own_member) = {
                let m = metrics.borrow_and_update();
                let c = &m.membership_config;
                let own_member = c.membership().nodes().any(|(id, _)| *id == self.id);
                (c.log_id().map_or(0, |l| l.index), own_member)
            };
            if !own_member && own_index > 0 && !said_not_member {
                tracing::warn!(
                    membership_index = own_index,
                    "this node is not in the cluster's membership (removed): it does not \
                     campaign and serves only stale reads; add it again (ordo cluster \
                     add-learner) to rejoin, or stop it"
                );
            }
            said_not_member = !own_member && own_index > 0;
            match (removed_by, self.notices.latest()) {
                (None, Some((from, index))) if index > own_index => {
                    tracing::warn!(
                        peer = from,
                        membership_index = index,
                        own_membership_index = own_index,
                        "this node was removed from the cluster (node {from} holds a newer \
                         membership without it): it stops campaigning and serves only stale \
                         reads; add it again (ordo cluster add-learner) to rejoin, or stop it"
                    );
                    self.hold.set_removed(true);
                    removed_by = Some((from, index));
                }
                (Some((_, index)), _) if own_index >= index && own_member => {
                    tracing::info!(
                        membership_index = own_index,
                        "this node is a member again: it takes part in elections"
                    );
                    self.hold.set_removed(false);
                    removed_by = None;
                }
                _ => {}
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = self.notices.changed.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::notice;

    #[test]
    fn only_an_applied_membership_tells_a_candidate_it_was_removed() {
        // A member: never told.
        assert_eq!(notice(true, Some(7), Some(9)), None);
        // Not a member of a membership this node has applied: told, with its index.
        assert_eq!(notice(false, Some(7), Some(7)), Some(7));
        assert_eq!(notice(false, Some(7), Some(9)), Some(7));
        // Not a member of a membership still uncommitted here (or not yet applied): not yet.
        assert_eq!(notice(false, Some(7), Some(6)), None);
        assert_eq!(notice(false, Some(7), None), None);
        // No membership at all (a node not yet initialised).
        assert_eq!(notice(false, None, Some(3)), None);
    }
}
