//! Per-(user, chat) coalescing: several messages within a window become one notification
//! with a count. Pure functions over [`Pending`] rows; the stores apply them.

use super::{Pending, PushEvent};

/// The row after `ev` arrived. `None` means "no change": `ev` is a replay (its `seq` is not
/// above the row's `last_seq`). The first message opens the window: the row is due
/// `window_ms` after it, and later messages do not move that deadline (a busy chat still
/// notifies once per window instead of never).
pub fn add(row: Option<&Pending>, shard: i32, ev: &PushEvent, window_ms: i64) -> Option<Pending> {
    match row {
        Some(p) if ev.seq <= p.last_seq => None,
        Some(p) => Some(Pending {
            count: p.count.saturating_add(1),
            last_seq: ev.seq,
            sender_id: ev.sender_id,
            preview: ev.preview.clone(),
            ..p.clone()
        }),
        None => Some(Pending {
            shard,
            user_id: ev.user_id,
            chat_id: ev.chat_id,
            count: 1,
            first_seq: ev.seq,
            last_seq: ev.seq,
            sender_id: ev.sender_id,
            preview: ev.preview.clone(),
            first_at_ms: ev.at_ms,
            due_at_ms: ev.at_ms + window_ms.max(0),
        }),
    }
}

/// What stays of `current` once a notification covering `taken` was scheduled: nothing if no
/// message arrived since `taken` was read, else the newer messages, due one window from now.
pub fn after_taken(
    current: &Pending,
    taken: &Pending,
    now_ms: i64,
    window_ms: i64,
) -> Option<Pending> {
    if current.last_seq <= taken.last_seq {
        return None;
    }
    Some(Pending {
        count: current.count.saturating_sub(taken.count).max(1),
        first_seq: taken.last_seq + 1,
        first_at_ms: now_ms,
        due_at_ms: now_ms + window_ms.max(0),
        ..current.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, at: i64) -> PushEvent {
        PushEvent {
            user_id: 2,
            chat_id: 7,
            seq,
            sender_id: 1,
            preview: format!("m{seq}"),
            at_ms: at,
        }
    }

    #[test]
    fn messages_in_a_window_make_one_row_with_a_count() {
        let p = add(None, 0, &ev(3, 1000), 500).unwrap();
        assert_eq!(
            (p.count, p.first_seq, p.last_seq, p.due_at_ms),
            (1, 3, 3, 1500)
        );
        let p = add(Some(&p), 0, &ev(4, 1200), 500).unwrap();
        let p = add(Some(&p), 0, &ev(6, 1400), 500).unwrap();
        assert_eq!((p.count, p.first_seq, p.last_seq), (3, 3, 6));
        assert_eq!(p.preview, "m6");
        // The deadline stays where the first message put it.
        assert_eq!(p.due_at_ms, 1500);
    }

    #[test]
    fn replays_change_nothing() {
        let p = add(None, 0, &ev(3, 1000), 500).unwrap();
        let p = add(Some(&p), 0, &ev(4, 1000), 500).unwrap();
        assert_eq!(add(Some(&p), 0, &ev(4, 2000), 500), None);
        assert_eq!(add(Some(&p), 0, &ev(2, 2000), 500), None);
    }

    #[test]
    fn messages_after_the_snapshot_stay_pending() {
        let taken = add(None, 0, &ev(3, 1000), 500).unwrap();
        let taken = add(Some(&taken), 0, &ev(4, 1100), 500).unwrap();
        // Nothing new: the row goes.
        assert_eq!(after_taken(&taken, &taken, 2000, 500), None);
        // Two more arrived while the notification was being built.
        let current = add(Some(&taken), 0, &ev(5, 1900), 500).unwrap();
        let current = add(Some(&current), 0, &ev(6, 1950), 500).unwrap();
        let left = after_taken(&current, &taken, 2000, 500).unwrap();
        assert_eq!((left.count, left.first_seq, left.last_seq), (2, 5, 6));
        assert_eq!(left.due_at_ms, 2500);
    }
}
