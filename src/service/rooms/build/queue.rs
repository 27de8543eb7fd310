//! Local sends to one room share a commit.
//!
//! A room takes one append at a time (its lock is held until the write is durable), so one
//! event per commit would cap a busy room at one event per fsync. Instead every send joins the
//! room's queue and then waits for either its answer or the room lock; whoever gets the lock
//! stages everything queued — each event authorised on top of the ones before it, exactly as
//! if they had been sent one after another — and commits them in one batch. Sends that arrive
//! during that commit queue up for the next one, so the batch grows with the load and a lone
//! send still waits for exactly one commit.
//!
//! Invariant: a queued send is answered once its batch's commit has finished, in the commit
//! task (so a dropped leader cannot lose the answer), or not at all if its batch was dropped
//! before committing — in which case nothing of it was written and it is queued again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::oneshot;

use super::{Rooms, Staged};
use crate::{
    error::{Error, Result},
    service::rooms::NewEvent,
    store::CommitError,
};

/// How often a send is queued again after the batch it was in was dropped uncommitted (its
/// leader's request went away between staging and committing).
const REQUEUES: usize = 3;

type Answer = oneshot::Sender<Result<OwnedEventId>>;

struct Queued {
    sender: OwnedUserId,
    event: NewEvent,
    answer: Answer,
}

/// The sends waiting for each room. Guarded by its own short lock; an entry exists only while
/// something is queued.
#[derive(Default)]
pub(crate) struct SendQueues {
    rooms: Mutex<HashMap<OwnedRoomId, Vec<Queued>>>,
}

impl SendQueues {
    fn push(&self, room_id: &RoomId, queued: Queued) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.entry(room_id.to_owned()).or_default().push(queued);
    }

    fn take(&self, room_id: &RoomId) -> Vec<Queued> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.remove(room_id).unwrap_or_default()
    }
}

/// A client transaction: the same one twice in a batch is one event.
type TxnKey = (OwnedUserId, String, String, String);

fn txn_key(queued: &Queued) -> Option<TxnKey> {
    let txn = queued.event.txn.as_ref()?;
    Some((
        queued.sender.clone(),
        txn.device_id.clone(),
        txn.scope.clone(),
        txn.txn_id.clone(),
    ))
}

impl Rooms {
    /// Builds, authorises and stores one event from a local user.
    pub async fn send(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: NewEvent,
    ) -> Result<OwnedEventId> {
        for _ in 0..=REQUEUES {
            let (answer, mut answered) = oneshot::channel();
            self.send_queues.push(
                room_id,
                Queued {
                    sender: sender.to_owned(),
                    event: event.clone(),
                    answer,
                },
            );
            let outcome = tokio::select! {
                biased;
                outcome = &mut answered => outcome,
                lock = self.lock_room(room_id) => {
                    // Ours may be among them, or already taken by the previous holder.
                    let queued = self.send_queues.take(room_id);
                    if !queued.is_empty() {
                        self.send_batch(room_id, lock, queued).await;
                    }
                    answered.await
                }
            };
            if let Ok(result) = outcome {
                return result;
            }
        }
        Err(Error::unknown("the send was interrupted; retry it"))
    }

    /// Stages `queued` in order under `lock` and commits them together. A send that fails
    /// before anything of it is staged (not authorised, invalid) is answered at once; one that
    /// fails half-staged spoils the batch, which is then built again without it.
    async fn send_batch(
        &self,
        room_id: &RoomId,
        mut lock: tokio::sync::OwnedMutexGuard<()>,
        mut queued: Vec<Queued>,
    ) {
        loop {
            let mut staged = match self.stage_locked(room_id, lock) {
                Ok(staged) => staged,
                Err(e) => {
                    for q in queued {
                        let _ = q.answer.send(Err(e.clone()));
                    }
                    return;
                }
            };
            match self.stage_queued(&mut staged, &mut queued) {
                Ok(accepted) => {
                    commit_batch(staged, accepted).await;
                    return;
                }
                Err(spoilt) => {
                    let q = queued.remove(spoilt.0);
                    let _ = q.answer.send(Err(spoilt.1));
                    lock = match staged.lock.take() {
                        Some(lock) => lock,
                        None => return,
                    };
                }
            }
        }
    }

    /// Adds each queued send to `staged`. Answers those refused before anything of them was
    /// staged, and returns the answers owed once the batch commits (consuming `queued`); or,
    /// leaving `queued` whole, the index and error of a send that failed half-staged.
    fn stage_queued(
        &self,
        staged: &mut Staged<'_>,
        queued: &mut Vec<Queued>,
    ) -> std::result::Result<Vec<(Answer, OwnedEventId)>, (usize, Error)> {
        let mut outcomes = Vec::with_capacity(queued.len());
        let mut in_batch: HashMap<TxnKey, OwnedEventId> = HashMap::new();
        for (i, q) in queued.iter().enumerate() {
            let key = txn_key(q);
            let known = match (&key, &q.event.txn) {
                (Some(key), Some(txn)) => match in_batch.get(key) {
                    Some(id) => Ok(Some(id.clone())),
                    None => self.txn_event(&q.sender, txn),
                },
                _ => Ok(None),
            };
            let staged_before = staged.pending.len();
            let added = match known {
                Ok(Some(id)) => Ok(id),
                Ok(None) => staged.add(&q.sender, q.event.clone()),
                Err(e) => Err(e),
            };
            match added {
                Ok(id) => {
                    if let Some(key) = key {
                        in_batch.insert(key, id.clone());
                    }
                    outcomes.push(Ok(id));
                }
                Err(e) if staged.pending.len() == staged_before => outcomes.push(Err(e)),
                Err(e) => return Err((i, e)),
            }
        }
        let mut accepted = Vec::with_capacity(queued.len());
        for (q, outcome) in std::mem::take(queued).into_iter().zip(outcomes) {
            match outcome {
                Ok(id) => accepted.push((q.answer, id)),
                Err(e) => {
                    let _ = q.answer.send(Err(e));
                }
            }
        }
        Ok(accepted)
    }
}

/// Commits `staged`, answering `accepted` with the outcome from the commit task.
async fn commit_batch(staged: Staged<'_>, accepted: Vec<(Answer, OwnedEventId)>) {
    let owed = Arc::new(Mutex::new(Some(accepted)));
    let answer_all = {
        let owed = owed.clone();
        move |outcome: &std::result::Result<(), CommitError>| {
            let accepted = owed.lock().unwrap_or_else(|e| e.into_inner()).take();
            for (answer, id) in accepted.into_iter().flatten() {
                let _ = answer.send(match outcome {
                    Ok(()) => Ok(id),
                    Err(CommitError::Conflict) => {
                        Err(Error::unknown("concurrent change to the room"))
                    }
                    Err(CommitError::Store(e)) => Err(e.clone().into()),
                });
            }
        }
    };
    let result = staged.try_commit_then(answer_all).await;
    // Failed before reaching the commit (nothing written): the answers are still owed.
    if let Err(e) = result {
        let accepted = owed.lock().unwrap_or_else(|e| e.into_inner()).take();
        for (answer, _) in accepted.into_iter().flatten() {
            let _ = answer.send(Err(e.clone()));
        }
    }
}
