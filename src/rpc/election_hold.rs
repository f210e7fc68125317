//! Elections held while a snapshot from the leader comes in (see `ElectionHold`), or for good
//! once this node learns it was removed from the cluster (`removal`): the owner of openraft's
//! election switch, so that neither turns it back on under the other.

use std::sync::Arc;

use crate::raft::{Raft, Vote};

/// Keeps this node from campaigning while it receives or installs a snapshot from its leader.
///
/// openraft 0.9's follower hears nothing from the leader while it installs the last chunk
/// (seconds for a big store), so its election timer fires and its campaign deposes a healthy
/// leader, whose transfer then starts over. A node being sent a snapshot by the leader it
/// follows knows that leader is alive; it may campaign again `grace` after the last chunk is
/// done, by which time the leader's next append has reset its timer. Only chunks carrying the
/// committed vote of the leader this node follows hold elections: a stale or stray request
/// does not.
pub struct ElectionHold {
    raft: Raft,
    grace: std::time::Duration,
    /// Under one lock with the `elect` switch, so a re-enable timer can never switch
    /// elections back on during a newer hold, or on a removed node.
    state: std::sync::Mutex<HoldState>,
}

#[derive(Default)]
struct HoldState {
    /// Snapshot chunks being handled.
    chunks: usize,
    /// Bumped by each chunk: a re-enable timer acts only if no newer chunk came.
    generation: u64,
    /// A chunk's grace period has not run out yet (its timer switches elections back on).
    grace_pending: bool,
    /// Removed from the cluster (`removal`): no elections until a member again.
    removed: bool,
}

impl ElectionHold {
    pub fn new(raft: Raft, grace: std::time::Duration) -> Arc<ElectionHold> {
        Arc::new(ElectionHold {
            raft,
            grace,
            state: std::sync::Mutex::new(HoldState::default()),
        })
    }

    /// A removed node campaigns no more; one that is a member again may.
    pub fn set_removed(&self, removed: bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.removed = removed;
        // Back on only if no snapshot holds elections: not during a transfer, nor in its
        // grace period (its timer switches them on then).
        self.raft
            .runtime_config()
            .elect(!removed && state.chunks == 0 && !state.grace_pending);
    }

    /// A hold for as long as the guard lives, if `vote` is the leader's this node follows.
    pub fn enter(self: &Arc<Self>, vote: &Vote) -> Option<HoldGuard> {
        let from_our_leader = {
            let m = self.raft.metrics();
            let m = m.borrow();
            vote.is_committed()
                && *vote >= m.vote
                && m.current_leader == Some(vote.leader_id().node_id)
        };
        if !from_our_leader {
            return None;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.chunks == 0 {
            tracing::debug!("receiving a snapshot: elections held");
        }
        state.chunks += 1;
        state.generation += 1;
        self.raft.runtime_config().elect(false);
        Some(HoldGuard(self.clone()))
    }
}

pub struct HoldGuard(Arc<ElectionHold>);

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let hold = self.0.clone();
        let generation = {
            let mut state = hold.state.lock().unwrap_or_else(|p| p.into_inner());
            state.chunks -= 1;
            if state.chunks > 0 {
                return;
            }
            state.grace_pending = true;
            state.generation
        };
        tokio::spawn(async move {
            tokio::time::sleep(hold.grace).await;
            let mut state = hold.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.chunks == 0 && state.generation == generation {
                state.grace_pending = false;
                if !state.removed {
                    hold.raft.runtime_config().elect(true);
                    tracing::debug!("snapshot done: elections allowed again");
                }
            }
        });
    }
}
