//! What a run reports: serializable result structs (`--json`) and their text tables.
//! Pure: building and formatting only.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Microseconds as milliseconds with about three significant digits.
pub fn fmt_ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 10.0 {
        format!("{ms:.3}")
    } else if ms < 100.0 {
        format!("{ms:.2}")
    } else if ms < 1000.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// A rate or count with thousands separators: `12345.6` → `12,346`.
pub fn fmt_num(v: f64) -> String {
    let n = v.round() as i128;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// KiB as a human size.
pub fn fmt_kib(kib: f64) -> String {
    if kib.abs() >= 1024.0 * 1024.0 {
        format!("{:.2} GiB", kib / (1024.0 * 1024.0))
    } else if kib.abs() >= 1024.0 {
        format!("{:.1} MiB", kib / 1024.0)
    } else {
        format!("{kib:.1} KiB")
    }
}

/// A plain text table: first column left-aligned, the others right-aligned.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut first = true;
        for (i, c) in cells.enumerate() {
            if !first {
                out.push_str("  ");
            }
            if i == 0 {
                let _ = write!(out, "{c:<w$}", w = width[i]);
            } else {
                let _ = write!(out, "{c:>w$}", w = width[i]);
            }
            first = false;
        }
        while out.ends_with(' ') {
            out.pop();
        }
        out.push('\n');
    };
    line(&mut out, &mut headers.iter().copied());
    let total: usize = width.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for r in rows {
        line(&mut out, &mut r.iter().map(String::as_str));
    }
    out
}

/// `name: value` lines, names padded to one column.
pub fn render_kv(rows: &[(&str, String)]) -> String {
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<w$}  {v}");
    }
    out
}

/// One row per latency kind: count, p50, p90, p99, p99.9, max (ms).
pub fn render_latencies(rows: &[(&str, &LatencySummary)]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, s)| {
            vec![
                (*name).to_owned(),
                fmt_num(s.count as f64),
                fmt_ms(s.p50_us),
                fmt_ms(s.p90_us),
                fmt_ms(s.p99_us),
                fmt_ms(s.p999_us),
                fmt_ms(s.max_us),
            ]
        })
        .collect();
    render_table(
        &["latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"],
        &body,
    )
}

fn render_tally(t: &BTreeMap<String, u64>) -> String {
    if t.is_empty() {
        return "none".into();
    }
    t.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Server memory before and after the connections were opened.
#[derive(Debug, Clone, Serialize)]
pub struct ServerMemory {
    pub pids: Vec<u32>,
    pub rss_before_kib: u64,
    /// After the ramp and the settle time.
    pub rss_after_kib: u64,
    /// At the end of the hold.
    pub rss_end_kib: u64,
    pub per_connection_kib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    pub scenario: &'static str,
    pub target: String,
    pub requested: u64,
    pub established: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub ramp_seconds: f64,
    pub handshakes_per_s: f64,
    pub handshake: LatencySummary,
    pub tcp_connect: LatencySummary,
    pub hold_seconds: f64,
    /// Connections still open at the end of the hold.
    pub open_at_end: u64,
    pub dropped: u64,
    pub dropped_reasons: BTreeMap<String, u64>,
    pub pings_sent: u64,
    pub pongs: u64,
    pub server_errors: BTreeMap<String, u64>,
    pub server_memory: Option<ServerMemory>,
    /// `chat_connections` from `/metrics` (with several processes behind one port, only the
    /// process that answered the scrape).
    pub chat_connections_before: Option<f64>,
    pub chat_connections_after: Option<f64>,
    pub bench_rss_before_kib: Option<u64>,
    pub bench_rss_after_kib: Option<u64>,
    pub bench_per_connection_kib: Option<f64>,
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "n/a".into(), |v| v.to_string())
}

impl ConnectReport {
    pub fn render(&self) -> String {
        let mut rows = vec![
            ("target", self.target.clone()),
            (
                "connections",
                format!(
                    "{} established of {} requested, {} failed",
                    self.established, self.requested, self.failed
                ),
            ),
            ("failures", render_tally(&self.failures)),
            (
                "ramp",
                format!(
                    "{:.2} s, {} handshakes/s",
                    self.ramp_seconds,
                    fmt_num(self.handshakes_per_s)
                ),
            ),
            (
                "hold",
                format!(
                    "{:.1} s, {} open at end, {} dropped ({})",
                    self.hold_seconds,
                    self.open_at_end,
                    self.dropped,
                    render_tally(&self.dropped_reasons)
                ),
            ),
            (
                "heartbeats",
                format!("{} pings sent, {} pongs", self.pings_sent, self.pongs),
            ),
            ("server errors", render_tally(&self.server_errors)),
            (
                "chat_connections",
                format!(
                    "{} before, {} after",
                    opt(self.chat_connections_before),
                    opt(self.chat_connections_after)
                ),
            ),
        ];
        match &self.server_memory {
            Some(m) => {
                rows.push((
                    "server pids",
                    m.pids
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ));
                rows.push((
                    "server RSS",
                    format!(
                        "{} before, {} after ramp, {} at end",
                        fmt_kib(m.rss_before_kib as f64),
                        fmt_kib(m.rss_after_kib as f64),
                        fmt_kib(m.rss_end_kib as f64)
                    ),
                ));
                rows.push(("server RSS/conn", fmt_kib(m.per_connection_kib)));
            }
            None => rows.push(("server RSS", "n/a (pass --server-pid)".into())),
        }
        if let (Some(b), Some(a)) = (self.bench_rss_before_kib, self.bench_rss_after_kib) {
            rows.push((
                "bench RSS",
                format!("{} before, {} after", fmt_kib(b as f64), fmt_kib(a as f64)),
            ));
        }
        if let Some(p) = self.bench_per_connection_kib {
            rows.push(("bench RSS/conn", fmt_kib(p)));
        }
        let mut out = render_kv(&rows);
        out.push('\n');
        out.push_str(&render_latencies(&[
            ("handshake (connect→hello)", &self.handshake),
            ("tcp connect", &self.tcp_connect),
        ]));
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HandshakeReport {
    pub scenario: &'static str,
    pub target: String,
    pub requested: u64,
    pub concurrency: usize,
    pub established: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub seconds: f64,
    pub handshakes_per_s: f64,
    pub handshake: LatencySummary,
    pub tcp_connect: LatencySummary,
}

impl HandshakeReport {
    pub fn render(&self) -> String {
        let rows = vec![
            ("target", self.target.clone()),
            (
                "handshakes",
                format!(
                    "{} of {} ({} failed), concurrency {}",
                    self.established, self.requested, self.failed, self.concurrency
                ),
            ),
            ("failures", render_tally(&self.failures)),
            (
                "rate",
                format!(
                    "{} handshakes/s over {:.2} s",
                    fmt_num(self.handshakes_per_s),
                    self.seconds
                ),
            ),
        ];
        let mut out = render_kv(&rows);
        out.push('\n');
        out.push_str(&render_latencies(&[
            ("handshake (connect→hello)", &self.handshake),
            ("tcp connect", &self.tcp_connect),
        ]));
        out
    }
}

/// Result of `storm`.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub scenario: &'static str,
    pub system: String,
    pub target: String,
    pub clients: u64,
    pub senders: u64,
    pub chat_size: u64,
    pub missed_per_chat: u64,
    pub connected_before: u64,
    pub connect_failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub warm_received: u64,
    pub missed_acked: u64,
    pub reconnected: u64,
    pub reconnect_failed: u64,
    /// Sessions the server said it restored (Centrifugo `recovered`, Socket.IO same `pid`).
    pub recovered_sessions: u64,
    pub caught_up: u64,
    /// Clients whose system (as configured) has no way to catch up.
    pub no_catch_up: u64,
    pub timed_out: u64,
    pub duplicates: u64,
    /// From the storm's start until the last client was back (handshake done).
    pub all_back_s: f64,
    /// Until the last client had every missed message (None if some never did).
    pub all_caught_up_s: Option<f64>,
    /// Per client: storm start → back.
    pub back: LatencySummary,
    /// Per client: storm start → caught up.
    pub caught_up_after: LatencySummary,
    pub errors: BTreeMap<String, u64>,
}

impl StormReport {
    pub fn render(&self) -> String {
        let rows = vec![
            ("target", format!("{} ({})", self.target, self.system)),
            (
                "clients",
                format!(
                    "{} in chats of {} (+{} senders), {} missed messages per chat",
                    self.clients, self.chat_size, self.senders, self.missed_per_chat
                ),
            ),
            (
                "before",
                format!(
                    "{} connected, {} failed, {} got the first message, {} missed messages acked",
                    self.connected_before,
                    self.connect_failed,
                    self.warm_received,
                    self.missed_acked
                ),
            ),
            (
                "storm",
                format!(
                    "{} back ({} failed) in {:.2} s; {} sessions recovered by the server",
                    self.reconnected,
                    self.reconnect_failed,
                    self.all_back_s,
                    self.recovered_sessions
                ),
            ),
            (
                "caught up",
                format!(
                    "{} of {} ({} without a catch-up mechanism, {} timed out){}",
                    self.caught_up,
                    self.clients,
                    self.no_catch_up,
                    self.timed_out,
                    self.all_caught_up_s
                        .map_or(String::new(), |s| format!("; all within {s:.2} s"))
                ),
            ),
            ("duplicates", self.duplicates.to_string()),
            ("failures", render_tally(&self.failures)),
            ("errors", render_tally(&self.errors)),
        ];
        let mut out = render_kv(&rows);
        out.push('\n');
        out.push_str(&render_latencies(&[
            ("storm start → back", &self.back),
            ("storm start → caught up", &self.caught_up_after),
        ]));
        out
    }
}

/// Result of one load phase (`direct`, `group`, one step of `sweep`).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub scenario: &'static str,
    pub target: String,
    pub connections: u64,
    pub senders: u64,
    /// Members that should receive each message (1 for direct chats, M−1 in a group).
    pub recipients_per_message: u64,
    pub target_rate: f64,
    pub per_sender_rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Messages handed to sockets during the measured window, per second.
    pub sent_per_s: f64,
    /// Deliveries received during the measured window, per second.
    pub deliveries_per_s: f64,
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    pub send_failures: u64,
    pub delivered: u64,
    pub expected_deliveries: u64,
    /// expected − delivered after the drain (never negative).
    pub lost: u64,
    /// sent − acked − rejected.
    pub unacked: u64,
    pub duplicate_or_reordered: u64,
    pub errors: BTreeMap<String, u64>,
    pub drained: bool,
    pub drain_s: f64,
    pub dropped_connections: u64,
    pub delivery: LatencySummary,
    pub delivery_from_send: LatencySummary,
    pub ack: LatencySummary,
    pub send_lag: LatencySummary,
}

impl LoadReport {
    pub fn render(&self) -> String {
        let rows = vec![
            ("target", self.target.clone()),
            (
                "load",
                format!(
                    "{} msg/s target over {} senders ({:.1}/s each), {} recipients/msg, {:.0} s (+{:.0} s warm-up)",
                    fmt_num(self.target_rate),
                    self.senders,
                    self.per_sender_rate,
                    self.recipients_per_message,
                    self.duration_s - self.warmup_s,
                    self.warmup_s
                ),
            ),
            (
                "connections",
                format!(
                    "{} ({} dropped during the run)",
                    self.connections, self.dropped_connections
                ),
            ),
            (
                "throughput",
                format!(
                    "{} msg/s sent, {} deliveries/s",
                    fmt_num(self.sent_per_s),
                    fmt_num(self.deliveries_per_s)
                ),
            ),
            (
                "messages",
                format!(
                    "{} sent, {} acked, {} rejected, {} send failures, {} unacked",
                    self.sent, self.acked, self.rejected, self.send_failures, self.unacked
                ),
            ),
            (
                "deliveries",
                format!(
                    "{} of {} expected, {} lost, {} duplicate/reordered",
                    self.delivered,
                    self.expected_deliveries,
                    self.lost,
                    self.duplicate_or_reordered
                ),
            ),
            (
                "drain",
                format!(
                    "{} after {:.2} s",
                    if self.drained {
                        "complete"
                    } else {
                        "TIMED OUT"
                    },
                    self.drain_s
                ),
            ),
            ("errors", render_tally(&self.errors)),
        ];
        let mut out = render_kv(&rows);
        out.push('\n');
        out.push_str(&render_latencies(&[
            ("delivery (scheduled→recv)", &self.delivery),
            ("delivery (sent→recv)", &self.delivery_from_send),
            ("ack (sent→ack)", &self.ack),
            ("send lag (scheduled→sent)", &self.send_lag),
        ]));
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub scenario: &'static str,
    pub p99_limit_ms: f64,
    /// First rate whose delivery p99 exceeded the limit.
    pub knee_rate: Option<f64>,
    /// Highest rate that stayed within the limit.
    pub best_rate: Option<f64>,
    pub steps: Vec<LoadReport>,
}

/// Index of the first step whose delivery p99 exceeds `limit_ms`.
pub fn find_knee(p99s_us: &[u64], limit_ms: f64) -> Option<usize> {
    p99s_us.iter().position(|&p| p as f64 / 1000.0 > limit_ms)
}

impl SweepReport {
    pub fn render(&self) -> String {
        let knee = self.knee_rate;
        let body: Vec<Vec<String>> = self
            .steps
            .iter()
            .map(|s| {
                let mark = if Some(s.target_rate) == knee {
                    "<- knee"
                } else {
                    ""
                };
                vec![
                    fmt_num(s.target_rate),
                    fmt_num(s.deliveries_per_s),
                    fmt_ms(s.delivery.p50_us),
                    fmt_ms(s.delivery.p99_us),
                    fmt_ms(s.delivery.p999_us),
                    fmt_ms(s.delivery.max_us),
                    fmt_ms(s.ack.p99_us),
                    s.lost.to_string(),
                    s.errors.values().sum::<u64>().to_string(),
                    (if s.drained { "yes" } else { "no" }).to_owned(),
                    mark.to_owned(),
                ]
            })
            .collect();
        let mut out = render_table(
            &[
                "rate msg/s",
                "delivered/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "ack p99",
                "lost",
                "errors",
                "drained",
                "",
            ],
            &body,
        );
        out.push('\n');
        match (knee, self.best_rate) {
            (Some(k), Some(b)) => {
                let _ = writeln!(
                    out,
                    "knee: {} msg/s (p99 > {} ms); highest rate within the limit: {} msg/s",
                    fmt_num(k),
                    self.p99_limit_ms,
                    fmt_num(b)
                );
            }
            (Some(k), None) => {
                let _ = writeln!(
                    out,
                    "knee: {} msg/s (p99 > {} ms already at the lowest rate)",
                    fmt_num(k),
                    self.p99_limit_ms
                );
            }
            (None, _) => {
                let _ = writeln!(
                    out,
                    "no knee: p99 stayed within {} ms at every rate tried",
                    self.p99_limit_ms
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarizes_histograms() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 10_000);
        assert!((4_990..=5_010).contains(&s.p50_us));
        assert!((9_890..=9_910).contains(&s.p99_us));
        assert!((9_980..=10_010).contains(&s.p999_us));
        assert!(s.max_us >= 10_000 && s.max_us <= 10_010);
        let empty = Histogram::<u64>::new(3).unwrap();
        assert_eq!(
            LatencySummary::from_histogram(&empty),
            LatencySummary::default()
        );
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(fmt_ms(123), "0.123");
        assert_eq!(fmt_ms(12_345), "12.35");
        assert_eq!(fmt_ms(123_456), "123.5");
        assert_eq!(fmt_ms(1_234_567), "1235");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(999.0), "999");
        assert_eq!(fmt_num(1000.0), "1,000");
        assert_eq!(fmt_num(12_345_678.4), "12,345,678");
        assert_eq!(fmt_num(-1234.0), "-1,234");
        assert_eq!(fmt_kib(8.25), "8.2 KiB");
        assert_eq!(fmt_kib(2048.0), "2.0 MiB");
    }

    #[test]
    fn renders_aligned_latency_table() {
        let s = LatencySummary {
            count: 1500,
            mean_us: 0.0,
            p50_us: 450,
            p90_us: 900,
            p99_us: 2_100,
            p999_us: 15_000,
            max_us: 120_000,
        };
        let t = render_latencies(&[("delivery", &s)]);
        let want = "\
latency (ms)  count    p50    p90    p99  p99.9    max
------------------------------------------------------
delivery      1,500  0.450  0.900  2.100  15.00  120.0
";
        assert_eq!(t, want);
    }

    fn step(rate: f64, p99_us: u64) -> LoadReport {
        LoadReport {
            scenario: "sweep",
            target: "http://127.0.0.1:1".into(),
            connections: 2,
            senders: 2,
            recipients_per_message: 1,
            target_rate: rate,
            per_sender_rate: rate / 2.0,
            duration_s: 10.0,
            warmup_s: 2.0,
            sent_per_s: rate,
            deliveries_per_s: rate,
            sent: 10,
            acked: 10,
            rejected: 0,
            send_failures: 0,
            delivered: 10,
            expected_deliveries: 10,
            lost: 0,
            unacked: 0,
            duplicate_or_reordered: 0,
            errors: BTreeMap::new(),
            drained: true,
            drain_s: 0.1,
            dropped_connections: 0,
            delivery: LatencySummary {
                count: 10,
                p99_us,
                ..Default::default()
            },
            delivery_from_send: LatencySummary::default(),
            ack: LatencySummary::default(),
            send_lag: LatencySummary::default(),
        }
    }

    #[test]
    fn sweep_table_marks_the_knee() {
        let r = SweepReport {
            scenario: "sweep",
            p99_limit_ms: 50.0,
            knee_rate: Some(2000.0),
            best_rate: Some(1000.0),
            steps: vec![step(1000.0, 3_000), step(2000.0, 75_000)],
        };
        let t = r.render();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("rate msg/s  delivered/s"));
        assert!(
            lines[2].starts_with("1,000") && !lines[2].contains("knee"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("2,000") && lines[3].ends_with("<- knee"),
            "{t}"
        );
        assert!(lines[3].contains("75.00"), "{t}");
        assert!(
            t.contains(
                "knee: 2,000 msg/s (p99 > 50 ms); highest rate within the limit: 1,000 msg/s"
            ),
            "{t}"
        );
        let none = SweepReport {
            knee_rate: None,
            best_rate: Some(2000.0),
            ..r
        };
        assert!(none.render().contains("no knee"));
        // The JSON has every step.
        let v: serde_json::Value = serde_json::to_value(&none).unwrap();
        assert_eq!(v["steps"].as_array().unwrap().len(), 2);
        assert_eq!(v["steps"][1]["delivery"]["p99_us"], 75_000);
    }

    #[test]
    fn knee_is_the_first_rate_over_the_limit() {
        assert_eq!(find_knee(&[1_000, 2_000, 60_000, 40_000], 50.0), Some(2));
        assert_eq!(find_knee(&[1_000, 2_000], 50.0), None);
        assert_eq!(
            find_knee(&[50_000], 50.0),
            None,
            "exactly at the limit is within it"
        );
        assert_eq!(find_knee(&[], 50.0), None);
    }
}
