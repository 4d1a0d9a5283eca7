//! Reading `chat_connections` from the edge pods.
//!
//! Targets come from the edge Pods (their IPs, the `metrics` port 9090, `/metrics`: never the
//! client port, which may speak TLS and sits behind a public load balancer). For tests and special
//! set-ups the operator can be started with `--allow-scrape-override`; then the ChatCluster
//! annotation `chat.tern.dev/scrape-targets` (`[pod=]host:port,…`) replaces discovery.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use std::time::Duration;

/// Annotation with explicit scrape targets (honoured only with `--allow-scrape-override`).
pub const SCRAPE_TARGETS_ANNOTATION: &str = "chat.tern.dev/scrape-targets";
/// The gauge every edge pod exports.
pub const CONNECTIONS_METRIC: &str = "chat_connections";

/// One place to read `/metrics` from; `pod` names the Pod for deletion-cost annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pod: Option<String>,
    pub url: String,
    /// The pod is Running and Ready, so the edge Service sends it clients. A pod that is not
    /// (starting, crash-looping, draining) and does not answer counts as holding no
    /// connections instead of making the scrape incomplete: such pods must not freeze
    /// scale-down.
    pub serving: bool,
}

/// One scrape result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub target: Target,
    pub connections: Result<u64, String>,
}

/// The sum of all `chat_connections` series in a Prometheus text exposition, or `None` when
/// the metric is absent. Pure.
pub fn parse_connections(text: &str) -> Option<u64> {
    let mut found = false;
    let mut sum = 0f64;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(CONNECTIONS_METRIC) else {
            continue;
        };
        // Exactly this metric: followed by labels or whitespace, not `chat_connections_total`.
        let rest = if let Some(r) = rest.strip_prefix('{') {
            match r.find('}') {
                Some(i) => &r[i + 1..],
                None => continue,
            }
        } else if rest.starts_with(char::is_whitespace) {
            rest
        } else {
            continue;
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            && v.is_finite()
            && v >= 0.0
        {
            sum += v;
            found = true;
        }
    }
    found.then(|| sum.round() as u64)
}

/// Targets from edge Pods: those with an IP that are not being deleted and have not
/// terminated (an evicted pod keeps its IP in status with phase `Failed`). Pure.
pub fn targets_from_pods(pods: &[Pod], port: u16) -> Vec<Target> {
    let mut out: Vec<Target> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let phase = status.phase.as_deref().unwrap_or("");
            if phase == "Failed" || phase == "Succeeded" {
                return None;
            }
            let ip = status.pod_ip.as_ref()?;
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let host = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip.clone()
            };
            Some(Target {
                pod: Some(p.name_any()),
                url: format!("http://{host}:{port}/metrics"),
                serving: phase == "Running" && ready,
            })
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

/// Targets from the override annotation: `[pod=]host:port` items separated by commas. Pure.
pub fn parse_override(value: &str) -> Vec<Target> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (pod, addr) = match item.split_once('=') {
                Some((p, a)) => (Some(p.trim().to_string()), a.trim()),
                None => (None, item),
            };
            Target {
                pod,
                url: format!("http://{addr}/metrics"),
                serving: true,
            }
        })
        .collect()
}

/// Scrape every target concurrently, each with `timeout`.
pub async fn scrape_all(
    http: &reqwest::Client,
    targets: &[Target],
    timeout: Duration,
) -> Vec<Sample> {
    let futs = targets.iter().map(|t| async move {
        let connections = scrape_one(http, &t.url, timeout).await;
        Sample {
            target: t.clone(),
            connections,
        }
    });
    futures::future::join_all(futs).await
}

async fn scrape_one(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<u64, String> {
    let resp = http
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let body = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
    parse_connections(&body).ok_or_else(|| format!("{url}: no {CONNECTIONS_METRIC} metric"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;

    #[test]
    fn parses_plain_and_labelled_series() {
        let text = "# HELP chat_connections Open connections\n# TYPE chat_connections gauge\nchat_connections 12\nchat_connections_total 999\nchat_messages_total 5\n";
        assert_eq!(parse_connections(text), Some(12));
        let text =
            "chat_connections{kind=\"ws\"} 10\nchat_connections{kind=\"poll\"} 3.0 1700000000\n";
        assert_eq!(parse_connections(text), Some(13));
        assert_eq!(parse_connections("chat_messages_total 1\n"), None);
        assert_eq!(parse_connections("chat_connections NaN\n"), None);
        assert_eq!(parse_connections(""), None);
    }

    #[test]
    fn pods_with_ip_become_targets() {
        let pod = |name: &str, ip: Option<&str>| Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                pod_ip: ip.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = targets_from_pods(
            &[
                pod("b", Some("10.0.0.2")),
                pod("a", Some("fd00::1")),
                pod("c", None),
            ],
            8080,
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].url, "http://[fd00::1]:8080/metrics");
        assert_eq!(t[1].pod.as_deref(), Some("b"));
    }

    #[test]
    fn terminated_pods_are_skipped_and_unready_ones_do_not_serve() {
        use k8s_openapi::api::core::v1::PodCondition;
        let pod = |name: &str, phase: &str, ready: bool| Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                pod_ip: Some("10.244.0.9".into()),
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = targets_from_pods(
            &[
                pod("evicted", "Failed", false),
                pod("crashing", "Running", false),
                pod("ok", "Running", true),
            ],
            8080,
        );
        let got: Vec<(Option<&str>, bool)> =
            t.iter().map(|t| (t.pod.as_deref(), t.serving)).collect();
        assert_eq!(got, vec![(Some("crashing"), false), (Some("ok"), true)]);
    }

    #[test]
    fn override_with_and_without_pod_names() {
        let t = parse_override("edge-0=127.0.0.1:4000, 127.0.0.1:4001,");
        assert_eq!(
            t,
            vec![
                Target {
                    pod: Some("edge-0".into()),
                    url: "http://127.0.0.1:4000/metrics".into(),
                    serving: true,
                },
                Target {
                    pod: None,
                    url: "http://127.0.0.1:4001/metrics".into(),
                    serving: true,
                },
            ]
        );
    }
}
