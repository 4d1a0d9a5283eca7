//! Process facts from `/proc` and the server's `/metrics`: resident memory, the open-files
//! limit, and a Prometheus gauge. Parsers are pure; readers are thin.

/// `VmRSS` in KiB from the text of `/proc/<pid>/status`.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Resident memory of `pid` in KiB.
pub fn vm_rss_kib(pid: u32) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss_kib(&text)
        .ok_or_else(|| std::io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// Summed resident memory of `pids` in KiB; `None` if any cannot be read (or none given).
pub fn total_rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| vm_rss_kib(p).ok()).sum()
}

/// Resident memory of this bench process in KiB.
pub fn self_rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(parse_vm_rss_kib)
}

/// Sum of every sample of the metric `name` (all label sets) in Prometheus text format.
pub fn parse_gauge(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // Exactly this metric: followed by labels or whitespace, not `name_total` etc.
        let value_part = if let Some(labels) = rest.strip_prefix('{') {
            match labels.split_once('}') {
                Some((_, v)) => v,
                None => continue,
            }
        } else if rest.starts_with([' ', '\t']) {
            rest
        } else {
            continue;
        };
        if let Some(v) = value_part
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Raise the soft open-files limit to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// File descriptors a run of `connections` sockets needs, with room for the runtime, HTTP
/// client and stdio.
pub fn fds_needed(connections: usize) -> u64 {
    connections as u64 + 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status =
            "Name:\tchat-server\nVmPeak:\t  200000 kB\nVmRSS:\t   53412 kB\nRssAnon:\t 40000 kB\n";
        assert_eq!(parse_vm_rss_kib(status), Some(53412));
        assert_eq!(parse_vm_rss_kib("Name: x\n"), None);
        assert!(self_rss_kib().unwrap() > 0);
    }

    #[test]
    fn reads_gauges_across_label_sets() {
        let text = "# HELP chat_connections Open WebSocket connections.\n\
                    # TYPE chat_connections gauge\n\
                    chat_connections 1500\n\
                    chat_connections_total 9\n\
                    chat_connections{role=\"edge\"} 500\n\
                    other 3\n";
        assert_eq!(parse_gauge(text, "chat_connections"), Some(2000.0));
        assert_eq!(parse_gauge(text, "missing"), None);
        assert_eq!(
            parse_gauge("chat_connections_total 3\n", "chat_connections"),
            None
        );
    }

    #[test]
    fn nofile_limit_is_positive() {
        assert!(raise_nofile_limit() >= 64);
        assert_eq!(fds_needed(100), 164);
    }
}
