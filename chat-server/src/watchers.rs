//! Who on this process should hear of a user's presence changes: the connections that asked
//! (`presence_subscribe`) and the user's direct-chat partners. The planes call
//! [`Watchers::presence_changed`] for every change, local or from another node.

use crate::hub::{Hub, frame};
use crate::members::Directory;
use crate::model::{Presence, UserId};
use crate::plane::PlaneEvents;
use crate::presence::Subscriptions;
use crate::protocol;
use std::sync::Arc;

pub struct Watchers {
    subs: Subscriptions,
    hub: Arc<Hub>,
    directory: Arc<Directory>,
}

impl Watchers {
    pub fn new(hub: Arc<Hub>, directory: Arc<Directory>) -> Self {
        Watchers {
            subs: Subscriptions::default(),
            hub,
            directory,
        }
    }

    /// A connection of `subscriber` watches `watched` (counted per connection).
    pub fn subscribe(&self, subscriber: UserId, watched: &[UserId]) {
        self.subs.add(subscriber, watched);
    }

    /// A connection of `subscriber` closed: its subscriptions end.
    pub fn unsubscribe(&self, subscriber: UserId, watched: &[UserId]) {
        self.subs.remove(subscriber, watched);
    }
}

#[async_trait::async_trait]
impl PlaneEvents for Watchers {
    async fn presence_changed(&self, p: Presence) {
        let mut to = self.subs.watchers(p.user_id);
        match self.directory.partners(p.user_id).await {
            Ok(partners) => to.extend(partners.iter().copied()),
            Err(e) => {
                tracing::warn!(cause = %e, user_id = p.user_id, "presence: cannot list direct partners")
            }
        }
        to.sort_unstable();
        to.dedup();
        self.hub
            .deliver(&to, &frame(protocol::presence_frame(&p)), None);
    }
}
