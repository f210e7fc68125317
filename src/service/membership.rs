//! The cluster as this node sees it (`status`, `readiness`) and membership changes: add a
//! learner, set the voters, remove a learner. The leader first refuses what would hurt the
//! cluster (`check_against_membership`: a voter-to-be that has not caught up, an address
//! another node has). A change runs on the leader; any other node sends it there over
//! `rpc::MEMBERSHIP_PATH`, once (a node that receives one and does not lead says so rather
//! than forwarding again). The leader answers the log id of the membership entry; the node
//! that forwarded the change waits until it has that entry too, then answers with its own
//! status, which then shows the change.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::FutureExt;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tokio::time::Instant;

use super::{storage_failure, Answer, Service, ServiceError};
use crate::order::ValidationError;
use crate::raft::{LogId, NodeId};
use crate::rpc::{LeaderAnswer, MembershipChange, MEMBERSHIP_PATH};
use crate::wire::{CheckJson, ClusterStatus, ReadinessJson};

/// A node further behind its own log than this is not ready (it is catching up).
const READY_APPLY_LAG: u64 = 1000;

/// A learner further behind the leader's log than this is not made a voter; adding a learner
/// waits until it is this close (openraft's `replication_lag_threshold`, set from it).
pub const MAX_PROMOTION_LAG: u64 = 1000;

/// Adding a learner waits until it has caught up; bounded.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);
/// A forwarding node waits this much longer than the leader does: for the answer to travel,
/// and for this node to receive the membership entry.
const FORWARD_MARGIN: Duration = Duration::from_secs(5);

impl Service {
    /// This node's view of the cluster, from openraft's metrics and its log's last entry.
    pub async fn status(&self) -> ClusterStatus {
        let log = self.log.clone();
        let last_log_term = tokio::task::spawn_blocking(move || log.last_log_id())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .map(|l| l.leader_id.term)
            // A log purged up to its snapshot: its last entry was the snapshot's, applied.
            .or_else(|| {
                self.raft
                    .metrics()
                    .borrow()
                    .last_applied
                    .map(|l| l.leader_id.term)
            });
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let joint_voters = joint_voters(membership);
        let mut members = BTreeMap::new();
        let mut learners = BTreeMap::new();
        let mut client_addrs = BTreeMap::new();
        for (id, node) in membership.nodes() {
            let target = if voters.contains(id) {
                &mut members
            } else {
                &mut learners
            };
            target.insert(id.to_string(), node.addr.clone());
            if let Some(client) = self.directory.client_addr(*id) {
                if client != node.addr {
                    client_addrs.insert(id.to_string(), client);
                }
            }
        }
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        ClusterStatus {
            node_id: self.id,
            cluster_id: self.rpc.cluster_id(),
            state: role.to_string(),
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_log_term,
            last_applied: m.last_applied.map(|l| l.index),
            members,
            learners,
            client_addrs,
            joint_voters,
            // The store's, which the service does not read: `api` adds it.
            state_clock_ms: None,
        }
    }

    /// Whether this node should get traffic (`/readyz`): its Raft core runs (a storage
    /// failure stops it), it knows a leader, a leader has heard from a quorum recently, and it
    /// has applied nearly all of its log.
    pub fn readiness(&self) -> ReadinessJson {
        let m = self.raft.metrics().borrow().clone();
        let mut checks = BTreeMap::new();
        let mut check = |name: &str, ok: bool, detail: String| {
            checks.insert(name.to_string(), CheckJson { ok, detail });
        };
        let failure = storage_failure(&self.raft);
        check(
            "storage",
            failure.is_none(),
            match &failure {
                Some(cause) => format!("storage failed: {cause}"),
                None => "ok".into(),
            },
        );
        let running = m.state != ServerState::Shutdown;
        check(
            "raft",
            running,
            if running {
                format!("{:?}, term {}", m.state, m.current_term)
            } else {
                "the Raft core has stopped: see the log".into()
            },
        );
        check(
            "leader",
            m.current_leader.is_some(),
            match m.current_leader {
                Some(l) => format!("node {l}"),
                None => "no leader known".into(),
            },
        );
        // A node removed from the cluster (and left running) must get no traffic. One with no
        // membership yet (waiting to be added) is caught by the leader check.
        let membership = m.membership_config.membership();
        let known = m.membership_config.log_id().is_some();
        let member = !known || membership.nodes().any(|(id, _)| *id == self.id);
        check(
            "member",
            member,
            if member {
                "in the membership".into()
            } else {
                "not in the cluster's membership: removed".into()
            },
        );
        if m.state == ServerState::Leader {
            let stale_after = self.quorum_stale_after.as_millis() as u64;
            let fresh = m.millis_since_quorum_ack.is_none_or(|ms| ms <= stale_after);
            check(
                "quorum",
                fresh,
                match m.millis_since_quorum_ack {
                    Some(ms) => format!("last acknowledged by a quorum {ms} ms ago"),
                    None => "just elected".into(),
                },
            );
        }
        let applied = m.last_applied.map_or(0, |l| l.index);
        let last = m.last_log_index.unwrap_or(0);
        let lag = last.saturating_sub(applied);
        check(
            "applied",
            lag <= READY_APPLY_LAG,
            format!("applied {applied} of {last} log entries"),
        );
        ReadinessJson {
            ready: checks.values().all(|c| c.ok),
            checks,
        }
    }

    /// Makes a membership change on the leader, from any node, and returns this node's view
    /// of the cluster once it has the change.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<ClusterStatus, ServiceError> {
        change.validate().map_err(ServiceError::Invalid)?;
        // The change, kept when it takes this node out (see the answer below).
        let removal = self.removes_this_node(&change).then(|| change.clone());
        let leader = self.raft.metrics().borrow().current_leader;
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT + FORWARD_MARGIN;
        let answer = match leader {
            None => return Err(ServiceError::NoLeader),
            Some(leader) if leader == self.id => self.change_membership_as_leader(change).await,
            Some(_) => {
                let addr = self.leader_peer_addr().ok_or(ServiceError::NoLeader)?;
                self.rpc
                    .call_leader(&addr, MEMBERSHIP_PATH, &change, deadline)
                    .await
                    .map_err(ServiceError::from)
            }
        };
        // The leader stops replicating to a node the change removes, so this node may never
        // receive the entry (it may hold the change half done): the membership the leader
        // committed, not a timeout after the whole deadline.
        if let (LeaderAnswer::Done(_), Some(change)) = (&answer, &removal) {
            return Ok(status_after(self.status().await, change));
        }
        match answer {
            LeaderAnswer::Done(entry) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                self.raft
                    .wait(Some(remaining))
                    .metrics(
                        |m| m.membership_config.log_id() >= &entry,
                        "membership entry received",
                    )
                    .await
                    .map_err(|_| {
                        ServiceError::Timeout(
                            "the change was made, but this node has not received it yet: \
                             check /cluster/status"
                                .into(),
                        )
                    })?;
                Ok(self.status().await)
            }
            LeaderAnswer::NotLeader(_) | LeaderAnswer::Deposed(_) => Err(ServiceError::NoLeader),
            LeaderAnswer::Failed(ServiceError::Timeout(m)) => Err(ServiceError::Timeout(format!(
                "{m}; the change may have been made: check /cluster/status"
            ))),
            LeaderAnswer::Failed(e) => Err(e),
        }
    }

    /// Whether `change` takes this node out of the membership: out of the voters (a learner
    /// left out of the voters stays a learner), or out as a learner.
    fn removes_this_node(&self, change: &MembershipChange) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        match change {
            MembershipChange::SetVoters(ids) => {
                membership.voter_ids().any(|v| v == self.id) && !ids.contains(&self.id)
            }
            MembershipChange::RemoveLearner { id } => *id == self.id,
            MembershipChange::AddLearner { .. } => false,
        }
    }

    /// What the leader refuses before it proposes a change, against the membership and its
    /// replication: a learner at an address another node has (it would answer for that node,
    /// and, made a voter, vote twice), a member added again at another address (openraft keeps
    /// the old one: the call would wait for nothing), and a voter-to-be that has not caught up
    /// (a joint configuration needs it for every commit from the moment it is written: writes
    /// would stall until it caught up, for good if it never can).
    fn check_against_membership(&self, change: &MembershipChange) -> Result<(), ServiceError> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        match change {
            MembershipChange::AddLearner { id, addr } => {
                for (other, node) in membership.nodes() {
                    if other == id && node.addr != *addr {
                        return Err(ServiceError::Invalid(ValidationError::new(
                            "addr",
                            format!(
                                "node {id} is a member already, at {}: a member's address \
                                 cannot be changed by adding it again",
                                node.addr
                            ),
                        )));
                    }
                    if other != id && node.addr == *addr {
                        return Err(ServiceError::Invalid(ValidationError::new(
                            "addr",
                            format!("{addr} is node {other}'s address"),
                        )));
                    }
                }
            }
            MembershipChange::RemoveLearner { id } => {
                let refused = if membership.voter_ids().any(|v| v == *id) {
                    format!("node {id} is a voter: take it out of the voters first (members)")
                } else if !membership.nodes().any(|(n, _)| n == id) {
                    format!("node {id} is not in the membership")
                } else {
                    return Ok(());
                };
                return Err(ServiceError::Invalid(ValidationError::new("id", refused)));
            }
            MembershipChange::SetVoters(ids) => {
                let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                let last = m.last_log_index.unwrap_or(0);
                let replication = m.replication.unwrap_or_default();
                for id in ids.iter().filter(|id| !voters.contains(id)) {
                    // (A node not in the membership at all is openraft's to refuse.)
                    let Some(matched) = replication.get(id) else {
                        continue;
                    };
                    // None: it has not answered this leader yet (never, or a leader just
                    // elected has heard no append answer): as far as the leader knows, behind.
                    let matched = matched.map_or(0, |l| l.index);
                    if last.saturating_sub(matched) > MAX_PROMOTION_LAG {
                        return Err(ServiceError::Invalid(ValidationError::new(
                            "members",
                            format!(
                                "node {id} has {matched} of the leader's {last} log entries: \
                                 wait until it has caught up (GET /cluster/status on it), \
                                 then make it a voter"
                            ),
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The leader's half of a membership change: the log id of the membership entry it made.
    pub(super) async fn change_membership_as_leader(
        &self,
        change: MembershipChange,
    ) -> Answer<Option<LogId>> {
        if let Err(refused) = self.check_against_membership(&change) {
            return LeaderAnswer::Failed(refused);
        }
        // The field openraft's refusal is about (a learner promoted meanwhile is not found).
        let field = match &change {
            MembershipChange::RemoveLearner { .. } => "id",
            _ => "members",
        };
        let (changing, too_slow) = match change {
            MembershipChange::AddLearner { id, addr } => (
                self.raft.add_learner(id, BasicNode { addr }, true).boxed(),
                "the learner did not catch up in time",
            ),
            MembershipChange::RemoveLearner { id } => {
                let removal = ChangeMembers::RemoveNodes(BTreeSet::from([id]));
                (
                    self.raft.change_membership(removal, false).boxed(),
                    "the membership change did not commit in time",
                )
            }
            MembershipChange::SetVoters(ids) => (
                self.raft.change_membership(ids, false).boxed(),
                "the membership change did not commit in time",
            ),
        };
        let changed = match tokio::time::timeout(MEMBERSHIP_TIMEOUT, changing).await {
            Ok(done) => done.map(|resp| resp.log_id),
            Err(_) => return LeaderAnswer::Failed(ServiceError::Timeout(too_slow.into())),
        };
        match changed {
            Ok(entry) => LeaderAnswer::Done(Some(entry)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                LeaderAnswer::NotLeader(f.leader_id)
            }
            // Another change is under way (or one was left half-way: the same call again
            // finishes it): retryable, not a fault of this request.
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(e),
            ))) => LeaderAnswer::Failed(ServiceError::Unavailable(format!(
                "another membership change is in progress ({e}); retry"
            ))),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                LeaderAnswer::Failed(ServiceError::Invalid(ValidationError::new(
                    field,
                    e.to_string(),
                )))
            }
            Err(e @ RaftError::Fatal(_)) => {
                LeaderAnswer::Failed(ServiceError::Unavailable(e.to_string()))
            }
        }
    }
}

/// `status` as it is once `change`, which the leader has committed, is made: for a node the
/// change removes, which may never receive it. The voters are the change's (their addresses
/// as the membership has them), the other nodes stay learners unless the change removes them.
fn status_after(mut status: ClusterStatus, change: &MembershipChange) -> ClusterStatus {
    match change {
        MembershipChange::SetVoters(ids) => {
            let voters: BTreeSet<String> = ids.iter().map(NodeId::to_string).collect();
            let mut nodes = status.learners.clone();
            nodes.extend(status.members.clone());
            // Voters left out leave (openraft's `retain` is off); learners stay learners.
            status.members = nodes
                .into_iter()
                .filter(|(id, _)| voters.contains(id))
                .collect();
            status.learners.retain(|id, _| !voters.contains(id));
        }
        MembershipChange::RemoveLearner { id } => {
            status.learners.remove(&id.to_string());
        }
        MembershipChange::AddLearner { .. } => {}
    }
    status.joint_voters = None;
    status
}

/// The voter sets of a joint configuration (a change of the voters half done), old then new;
/// None for a plain one.
fn joint_voters(membership: &openraft::Membership<NodeId, BasicNode>) -> Option<Vec<Vec<NodeId>>> {
    let joint = membership.get_joint_config();
    (joint.len() > 1).then(|| {
        joint
            .iter()
            .map(|set| set.iter().copied().collect())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::{joint_voters, status_after};
    use crate::rpc::MembershipChange;
    use crate::wire::ClusterStatus;

    /// A removed node's view, half done (joint voters 1 2 3 and 1 2), with learner 4: the
    /// answer shows the change made.
    #[test]
    fn a_removed_node_answers_with_the_change_made() {
        let nodes = |ids: &[u64]| -> BTreeMap<String, String> {
            ids.iter()
                .map(|i| (i.to_string(), format!("h:{i}")))
                .collect()
        };
        let seen = ClusterStatus {
            node_id: 3,
            cluster_id: None,
            state: "follower".into(),
            leader_id: Some(1),
            term: 2,
            last_log_index: Some(9),
            last_log_term: Some(2),
            last_applied: Some(9),
            members: nodes(&[1, 2, 3]),
            learners: nodes(&[4]),
            client_addrs: BTreeMap::new(),
            joint_voters: Some(vec![vec![1, 2, 3], vec![1, 2]]),
            state_clock_ms: None,
        };
        let voters = MembershipChange::SetVoters([1, 2].into_iter().collect());
        let after = status_after(seen.clone(), &voters);
        assert_eq!(
            (after.members, after.learners, after.joint_voters),
            (nodes(&[1, 2]), nodes(&[4]), None)
        );
        // A learner made a voter while another leaves.
        let promoted = MembershipChange::SetVoters([1, 2, 4].into_iter().collect());
        let after = status_after(seen.clone(), &promoted);
        assert_eq!(
            (after.members, after.learners),
            (nodes(&[1, 2, 4]), nodes(&[]))
        );
        let seen = ClusterStatus {
            node_id: 4,
            joint_voters: None,
            ..seen
        };
        let after = status_after(seen, &MembershipChange::RemoveLearner { id: 4 });
        assert_eq!(
            (after.members, after.learners),
            (nodes(&[1, 2, 3]), nodes(&[]))
        );
    }

    #[test]
    fn only_a_joint_configuration_shows_its_voter_sets() {
        let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        let nodes = BTreeMap::<u64, openraft::BasicNode>::new();
        let plain = openraft::Membership::new(vec![set(&[1, 2, 3])], nodes.clone());
        assert_eq!(joint_voters(&plain), None);
        let joint = openraft::Membership::new(vec![set(&[1, 2, 3]), set(&[1, 2, 4])], nodes);
        assert_eq!(
            joint_voters(&joint),
            Some(vec![vec![1, 2, 3], vec![1, 2, 4]])
        );
    }
}
