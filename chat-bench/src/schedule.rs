//! Open-loop send schedule.
//!
//! A total rate `R` is spread over `S` sender connections: each sends every `S / R` seconds,
//! and sender `i` is shifted by `i / R` seconds, so the merged stream is evenly spaced at `R`.
//! Sends happen at their scheduled instants whatever the server does; a sender that falls
//! behind sends at once, and latency is measured from the *scheduled* instant, so a slow
//! server cannot hide its stalls by slowing the generator down (coordinated omission).

use std::time::Duration;

/// The send instants of one connection, as offsets from the phase start:
/// `first + k * interval` for `k` in `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendPlan {
    pub first: Duration,
    pub interval: Duration,
    pub count: u64,
}

impl SendPlan {
    /// Offset of the `k`-th send from the phase start.
    pub fn offset(&self, k: u64) -> Duration {
        self.first + self.interval.saturating_mul(k.min(u32::MAX as u64) as u32)
    }
}

/// The plan of sender `index` out of `senders` for `total_rate` messages per second over
/// `duration`. `None` when there is nothing to send (no rate, no senders, bad index).
pub fn plan_for(total_rate: f64, senders: u32, index: u32, duration: Duration) -> Option<SendPlan> {
    if !(total_rate.is_finite() && total_rate > 0.0) || senders == 0 || index >= senders {
        return None;
    }
    let interval_ns = (f64::from(senders) * 1e9 / total_rate).round().max(1.0) as u64;
    let first_ns = (f64::from(index) * 1e9 / total_rate).round() as u64;
    let duration_ns = duration.as_nanos().min(u64::MAX as u128) as u64;
    if first_ns >= duration_ns {
        return None;
    }
    // Instants first + k*interval strictly inside [0, duration).
    let count = (duration_ns - first_ns).div_ceil(interval_ns);
    Some(SendPlan {
        first: Duration::from_nanos(first_ns),
        interval: Duration::from_nanos(interval_ns),
        count,
    })
}

/// Per-connection rate when `total_rate` is spread over `senders`.
pub fn per_sender_rate(total_rate: f64, senders: u32) -> f64 {
    if senders == 0 {
        0.0
    } else {
        total_rate / f64::from(senders)
    }
}

/// Fewest senders that keep each below `max_per_sender` msg/s (the server's per-connection
/// rate limit is 50 msg/s sustained; stay under it with some margin).
pub fn senders_needed(total_rate: f64, max_per_sender: f64) -> u32 {
    if total_rate <= 0.0 || max_per_sender <= 0.0 {
        return 1;
    }
    (total_rate / max_per_sender)
        .ceil()
        .clamp(1.0, u32::MAX as f64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_instants(rate: f64, senders: u32, duration: Duration) -> Vec<u64> {
        let mut v: Vec<u64> = (0..senders)
            .filter_map(|i| plan_for(rate, senders, i, duration))
            .flat_map(|p| (0..p.count).map(move |k| p.offset(k).as_nanos() as u64))
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn total_count_matches_rate_times_duration() {
        for (rate, senders, secs) in [
            (1000.0, 10, 5),
            (40_000.0, 1000, 10),
            (7.0, 3, 2),
            (100.0, 20, 1),
        ] {
            let n = all_instants(rate, senders, Duration::from_secs(secs)).len() as f64;
            let want = rate * secs as f64;
            assert!(
                (n - want).abs() <= f64::from(senders),
                "rate {rate} senders {senders}: {n} vs {want}"
            );
        }
    }

    #[test]
    fn merged_stream_is_evenly_spaced() {
        let v = all_instants(1000.0, 8, Duration::from_secs(1));
        assert_eq!(v.len(), 1000);
        for w in v.windows(2) {
            let gap = w[1] - w[0];
            assert!((999_000..=1_001_000).contains(&gap), "gap {gap} ns");
        }
        assert_eq!(v[0], 0);
        assert!(*v.last().unwrap() < 1_000_000_000);
    }

    #[test]
    fn each_sender_gets_the_per_sender_interval() {
        let p = plan_for(2000.0, 100, 7, Duration::from_secs(3)).unwrap();
        assert_eq!(p.interval, Duration::from_millis(50));
        assert_eq!(p.first, Duration::from_micros(3500));
        assert_eq!(p.count, 60);
        assert_eq!(p.offset(2), Duration::from_micros(103_500));
    }

    #[test]
    fn degenerate_inputs_plan_nothing() {
        let d = Duration::from_secs(1);
        assert!(plan_for(0.0, 10, 0, d).is_none());
        assert!(plan_for(f64::NAN, 10, 0, d).is_none());
        assert!(plan_for(100.0, 0, 0, d).is_none());
        assert!(plan_for(100.0, 10, 10, d).is_none());
        assert!(plan_for(100.0, 10, 0, Duration::ZERO).is_none());
        // Fewer messages than senders: the late senders send nothing.
        assert!(plan_for(1.0, 10, 5, d).is_none());
        assert_eq!(plan_for(1.0, 10, 0, d).unwrap().count, 1);
    }

    #[test]
    fn sizing_stays_under_the_per_connection_limit() {
        assert_eq!(senders_needed(40_000.0, 40.0), 1000);
        assert_eq!(senders_needed(1.0, 40.0), 1);
        assert_eq!(senders_needed(0.0, 40.0), 1);
        assert!(per_sender_rate(40_000.0, senders_needed(40_000.0, 40.0)) <= 40.0);
    }
}
