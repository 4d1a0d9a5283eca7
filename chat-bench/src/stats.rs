//! Shared measurement state: latency histograms sharded to keep lock contention low, counters,
//! and error tallies by code. Recording is cheap and never allocates on the hot path.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Highest latency kept exactly: one hour in microseconds (larger values saturate).
const MAX_US: u64 = 3_600_000_000;
const SHARDS: usize = 8;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds are valid")
}

/// A latency histogram in microseconds, written from many connections at once.
pub struct LatencyHistogram {
    shards: Box<[Mutex<Histogram<u64>>]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }
}

impl LatencyHistogram {
    /// Record `us`; `hint` (e.g. the connection index) picks the shard.
    pub fn record(&self, hint: usize, us: u64) {
        let mut h = self.shards[hint % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        h.saturating_record(us.max(1));
    }

    /// All shards merged.
    pub fn snapshot(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for s in self.shards.iter() {
            let h = s.lock().unwrap_or_else(|p| p.into_inner());
            out.add(&*h).expect("same bounds");
        }
        out
    }
}

/// Counts per label (error code, failure kind). Rare events only: it takes a lock.
#[derive(Default)]
pub struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    pub fn add(&self, label: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(label) {
            Some(n) => *n += 1,
            None => {
                m.insert(label.to_owned(), 1);
            }
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn total(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

/// A relaxed event counter.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Connection-level measurements for a whole bench process.
#[derive(Default)]
pub struct FleetStats {
    pub attempts: Counter,
    /// Handshakes that reached `hello`.
    pub established: Counter,
    /// Connections open right now.
    pub open: Counter,
    pub failed: Counter,
    /// Failure kinds (`tcp_connect: ConnectionRefused`, `http 401`, `timeout`, …).
    pub failures: Tally,
    /// Connections the server closed (or that broke) while the bench wanted them open.
    pub dropped: Counter,
    pub dropped_reasons: Tally,
    /// TCP connect start → `hello` received.
    pub handshake: LatencyHistogram,
    /// TCP connect alone.
    pub tcp_connect: LatencyHistogram,
    pub pings_sent: Counter,
    pub pongs: Counter,
    pub reconnect_frames: Counter,
    /// `error` frames outside any load phase, by code.
    pub errors: Tally,
}

/// Measurements of one load phase (one `direct`/`group` run, or one rate of a sweep).
pub struct LoadStats {
    /// Latencies are recorded only for messages scheduled at or after this instant (unix ns):
    /// the warm-up is sent but not measured.
    pub measure_from_ns: u64,
    pub sent: Counter,
    pub send_failures: Counter,
    pub acked: Counter,
    pub delivered: Counter,
    /// Deliveries whose `seq` was not above the last one that connection saw in that chat:
    /// duplicates or reordering (both allowed to be zero only by the protocol's guarantees).
    pub duplicate_or_reordered: Counter,
    /// `error` frames that answered one of our sends.
    pub rejected: Counter,
    pub errors: Tally,
    /// Scheduled send → delivered to a member (the headline number; includes generator lag).
    pub delivery: LatencyHistogram,
    /// Actual send → delivered.
    pub delivery_from_send: LatencyHistogram,
    /// Actual send → `ack`.
    pub ack: LatencyHistogram,
    /// Scheduled send → actual send: how far behind the generator fell.
    pub send_lag: LatencyHistogram,
}

impl LoadStats {
    pub fn new(measure_from_ns: u64) -> Self {
        LoadStats {
            measure_from_ns,
            sent: Counter::default(),
            send_failures: Counter::default(),
            acked: Counter::default(),
            delivered: Counter::default(),
            duplicate_or_reordered: Counter::default(),
            rejected: Counter::default(),
            errors: Tally::default(),
            delivery: LatencyHistogram::default(),
            delivery_from_send: LatencyHistogram::default(),
            ack: LatencyHistogram::default(),
            send_lag: LatencyHistogram::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_into_one_view() {
        let h = LatencyHistogram::default();
        for i in 0..1000u64 {
            h.record(i as usize, i + 1);
        }
        let s = h.snapshot();
        assert_eq!(s.len(), 1000);
        assert_eq!(s.max(), 1000);
        let p50 = s.value_at_quantile(0.5);
        assert!((499..=501).contains(&p50), "{p50}");
        // Zero and huge values are clamped, not lost.
        h.record(0, 0);
        h.record(0, u64::MAX);
        assert_eq!(h.snapshot().len(), 1002);
    }

    #[test]
    fn tally_counts_by_label() {
        let t = Tally::default();
        t.add("rate_limited");
        t.add("rate_limited");
        t.add("invalid");
        assert_eq!(t.snapshot().get("rate_limited"), Some(&2));
        assert_eq!(t.total(), 3);
    }
}
