//! The after-append pipeline, shared by both planes: a stored batch becomes the counts for
//! the metrics, the messages to fan out (each with its chat's members, in batch order, which
//! is `seq` order within a chat), the acks, and the push candidates. Pure, apart from
//! [`members_of`], which reads the directory.
//!
//! Which results are fanned out: a message stored now, and the replay of a record already
//! stored under the same `message_id` (a distributed delivery process that crashed between
//! the write and the fan-out replays the record; its first fan-out may never have happened).
//! A client's resend (a new submission of a known `client_msg_id`) is only acked.

use crate::error::Result;
use crate::members::{ChatMembers, Directory};
use crate::model::{Ack, ChatId, SharedMessage, UserId};
use crate::push::{PushEvent, offline_events};
use crate::store::Appended;
use std::collections::HashMap;
use std::sync::Arc;

/// One append result and the `message_id` its submission carried (the distributed plane
/// assigns it on the edge; the local plane lets the store assign it).
pub struct Stored<'a> {
    pub result: &'a Result<Appended>,
    pub sent_id: Option<&'a str>,
}

impl Stored<'_> {
    /// Whether this result's message goes to the members (see the module docs).
    pub fn fans_out(&self) -> bool {
        match self.result {
            Ok(a) => !a.duplicate || self.sent_id == Some(a.message.message_id.as_str()),
            Err(_) => false,
        }
    }
}

/// One message to fan out.
pub struct FanOut {
    /// Its position in the batch (to find the submission: origin connection, timing).
    pub index: usize,
    pub message: SharedMessage,
    pub members: Arc<ChatMembers>,
}

/// What a stored batch turns into.
#[derive(Default)]
pub struct Plan {
    /// Messages stored by this batch.
    pub stored: u64,
    /// Results that were already stored (client resends and replays).
    pub duplicates: u64,
    /// The messages to fan out, in batch order.
    pub fan_out: Vec<FanOut>,
    /// Chats whose members could not be read: stored and acked but not fanned out (members
    /// catch up with `sync`).
    pub skipped: Vec<ChatId>,
}

/// The distinct chats whose members the batch's fan-out needs.
pub fn chats(batch: &[Stored<'_>]) -> Vec<ChatId> {
    let mut chats: Vec<ChatId> = batch
        .iter()
        .filter(|s| s.fans_out())
        .filter_map(|s| s.result.as_ref().ok().map(|a| a.message.chat_id))
        .collect();
    chats.sort_unstable();
    chats.dedup();
    chats
}

/// Read the members of `chats`; a chat that cannot be read is left out (and logged).
pub async fn members_of(
    directory: &Directory,
    chats: &[ChatId],
) -> HashMap<ChatId, Arc<ChatMembers>> {
    let mut out = HashMap::with_capacity(chats.len());
    for &chat_id in chats {
        match directory.members(chat_id).await {
            Ok(m) => {
                out.insert(chat_id, m);
            }
            Err(e) => {
                tracing::warn!(cause = %e, chat_id, "fan-out skipped (members catch up with sync)")
            }
        }
    }
    out
}

/// Plan the batch's side effects.
pub fn plan(batch: &[Stored<'_>], members: &HashMap<ChatId, Arc<ChatMembers>>) -> Plan {
    let mut plan = Plan::default();
    for (index, s) in batch.iter().enumerate() {
        let Ok(a) = s.result else { continue };
        if a.duplicate {
            plan.duplicates += 1;
        } else {
            plan.stored += 1;
        }
        if !s.fans_out() {
            continue;
        }
        let chat_id = a.message.chat_id;
        match members.get(&chat_id) {
            Some(m) => plan.fan_out.push(FanOut {
                index,
                message: a.message.clone(),
                members: m.clone(),
            }),
            None => {
                if !plan.skipped.contains(&chat_id) {
                    plan.skipped.push(chat_id);
                }
            }
        }
    }
    plan
}

impl Plan {
    /// Push events for the members (other than the sender) for whom `online` is false.
    pub fn push_events(&self, online: impl Fn(UserId) -> bool) -> Vec<PushEvent> {
        self.fan_out
            .iter()
            .flat_map(|f| offline_events(&f.message, &f.members.users, &online))
            .collect()
    }
}

/// The answer to a submission.
pub fn ack(result: Result<Appended>) -> Result<Ack> {
    result.map(|a| Ack::of(&a.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::model::{ChatType, Message};

    fn appended(chat_id: ChatId, seq: u64, id: &str, duplicate: bool) -> Result<Appended> {
        Ok(Appended {
            message: Arc::new(Message {
                message_id: id.into(),
                chat_id,
                seq,
                sender_id: 1,
                content: "hi".into(),
                media_url: None,
                media: None,
                client_msg_id: Some(format!("c{seq}")),
                created_at: 0,
            }),
            duplicate,
        })
    }

    fn members(chats: &[(ChatId, &[UserId])]) -> HashMap<ChatId, Arc<ChatMembers>> {
        chats
            .iter()
            .map(|(c, u)| {
                (
                    *c,
                    Arc::new(ChatMembers {
                        kind: ChatType::Group,
                        users: u.to_vec(),
                    }),
                )
            })
            .collect()
    }

    #[test]
    fn new_messages_fan_out_in_batch_order_and_resends_are_only_acked() {
        let results = [
            appended(7, 1, "a", false),
            appended(8, 1, "b", false),
            appended(7, 2, "c", false),
            // A client's resend: stored before under another message_id.
            appended(7, 1, "a", true),
            Err(Error::Unavailable("store down".into())),
        ];
        let batch: Vec<Stored> = results
            .iter()
            .map(|r| Stored {
                result: r,
                sent_id: None,
            })
            .collect();
        assert_eq!(chats(&batch), vec![7, 8]);
        let plan = plan(&batch, &members(&[(7, &[1, 2]), (8, &[1, 3])]));
        assert_eq!((plan.stored, plan.duplicates), (3, 1));
        let order: Vec<(usize, ChatId, u64)> = plan
            .fan_out
            .iter()
            .map(|f| (f.index, f.message.chat_id, f.message.seq))
            .collect();
        assert_eq!(order, vec![(0, 7, 1), (1, 8, 1), (2, 7, 2)]);
        assert!(plan.skipped.is_empty());
        let [_, _, _, resend, failed] = results;
        assert_eq!(ack(resend).unwrap().seq, 1);
        assert!(matches!(ack(failed), Err(Error::Unavailable(_))));
    }

    #[test]
    fn a_replayed_record_fans_out_again_but_counts_as_a_duplicate() {
        let results = [appended(7, 1, "m-1", true), appended(7, 2, "m-2", true)];
        let batch = [
            // The same record again (same message_id): its first fan-out may be lost.
            Stored {
                result: &results[0],
                sent_id: Some("m-1"),
            },
            // A resend with a new message_id: only acked.
            Stored {
                result: &results[1],
                sent_id: Some("other"),
            },
        ];
        let plan = plan(&batch, &members(&[(7, &[1, 2])]));
        assert_eq!((plan.stored, plan.duplicates), (0, 2));
        assert_eq!(plan.fan_out.len(), 1);
        assert_eq!(plan.fan_out[0].message.seq, 1);
    }

    #[test]
    fn chats_without_members_are_skipped_and_reported_once() {
        let results = [appended(7, 1, "a", false), appended(7, 2, "b", false)];
        let batch: Vec<Stored> = results
            .iter()
            .map(|r| Stored {
                result: r,
                sent_id: None,
            })
            .collect();
        let plan = plan(&batch, &HashMap::new());
        assert!(plan.fan_out.is_empty());
        assert_eq!(plan.skipped, vec![7]);
        assert_eq!(plan.stored, 2);
    }

    #[test]
    fn push_goes_to_offline_members_other_than_the_sender() {
        let results = [appended(7, 1, "a", false)];
        let batch = [Stored {
            result: &results[0],
            sent_id: None,
        }];
        let plan = plan(&batch, &members(&[(7, &[1, 2, 3])]));
        let events = plan.push_events(|u| u == 2);
        let to: Vec<UserId> = events.iter().map(|e| e.user_id).collect();
        assert_eq!(to, vec![3]);
    }
}
