//! Group commit of members' approvals: approvals that arrive while one commits wait and
//! then commit together. Each is a member's consent and must be durable before it answers,
//! and one transaction (one `fsync`) for many is what lets a million members approve in
//! minutes rather than hours; a member's answer is the same as if it had committed alone.

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use super::{Catalog, Result};
use crate::error::CatalogError;
use crate::model::{Agreement, ConnectionId, MemberId};
use crate::secret::Secret;

type Answer = oneshot::Sender<Result<(Agreement, Secret)>>;

/// Approvals waiting for the next commit, and the turn to make it.
#[derive(Debug, Default)]
pub(super) struct Approvals {
    waiting: parking_lot::Mutex<Vec<(MemberId, ConnectionId, Answer)>>,
    turn: tokio::sync::Mutex<()>,
}

impl Catalog {
    /// The member approves the connection's serving revision. A member connection key is
    /// issued for the pair (returned once; any earlier key of the pair stops working).
    pub async fn approve_agreement(&self, member: MemberId, id: ConnectionId) -> Result<(Agreement, Secret)> {
        let (answer, answered) = oneshot::channel();
        self.approvals.waiting.lock().push((member, id, answer));
        {
            // Whoever gets the turn commits every approval waiting by then, its own among
            // them unless an earlier turn took it.
            let _turn = self.approvals.turn.lock().await;
            let waiting = std::mem::take(&mut *self.approvals.waiting.lock());
            if !waiting.is_empty() {
                // On a task of its own: a caller that goes away (its client hung up) must
                // not take the others' answers with it.
                let catalog = self.clone();
                let _ = tokio::spawn(async move { catalog.commit_approvals(waiting).await }).await;
            }
        }
        answered.await.map_err(|_| CatalogError::conflict("the approval was interrupted; approve again"))?
    }

    /// Commits approvals, one transaction per connection; if one fails (a member that
    /// does not exist, the same approval twice), each of its approvals is tried on its own,
    /// so one bad approval never fails another.
    async fn commit_approvals(&self, waiting: Vec<(MemberId, ConnectionId, Answer)>) {
        let mut by_connection: BTreeMap<ConnectionId, Vec<(MemberId, Answer)>> = BTreeMap::new();
        for (member, id, answer) in waiting {
            by_connection.entry(id).or_default().push((member, answer));
        }
        for (id, group) in by_connection {
            let members: Vec<MemberId> = group.iter().map(|(m, _)| *m).collect();
            match self.approve_agreements(&members, id).await {
                Ok(approved) => {
                    for ((_, answer), approved) in group.into_iter().zip(approved) {
                        let _ = answer.send(Ok(approved));
                    }
                }
                Err(e) if group.len() == 1 => {
                    if let Some((_, answer)) = group.into_iter().next() {
                        let _ = answer.send(Err(e));
                    }
                }
                Err(_) => {
                    for (member, answer) in group {
                        let one = self.approve_agreements(&[member], id).await;
                        let _ = answer.send(one.map(|mut a| a.remove(0)));
                    }
                }
            }
        }
    }
}
