//! The server under test: one base URL, from which the WebSocket endpoint, the HTTP API and
//! `/metrics` are derived. Only loopback targets unless `--allow-remote`.

use anyhow::{Context, bail};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone)]
pub struct Target {
    /// Where TCP connections go.
    pub addr: SocketAddr,
    /// `http://host:port`
    pub http_base: String,
    /// `ws://host:port/ws`
    pub ws_url: String,
    /// Every edge given (`--url a,b,…`) as (address, WebSocket URL); the first is the one
    /// above. Connections are spread over them; the HTTP API uses the first.
    pub edges: Vec<(SocketAddr, String)>,
}

/// Split `scheme://host:port[/path]` into its scheme, host and port (default port 80).
pub fn split_url(url: &str) -> anyhow::Result<(&str, &str, u16)> {
    let (scheme, rest) = url
        .split_once("://")
        .context("URL needs a scheme, e.g. http://127.0.0.1:8080")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        bail!("user info in URLs is not supported");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').context("unclosed [ in URL host")?;
        match after.strip_prefix(':') {
            Some(p) => (h, p.parse().context("bad port")?),
            None if after.is_empty() => (h, 80),
            None => bail!("junk after ] in URL host"),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().context("bad port")?),
            None => (authority, 80),
        }
    };
    if host.is_empty() {
        bail!("URL has no host");
    }
    Ok((scheme, host, port))
}

impl Target {
    /// Parse and resolve `urls`: one URL, or several separated by commas (the edges of a
    /// cluster: connections are spread over them).
    pub fn parse(urls: &str, allow_remote: bool) -> anyhow::Result<Target> {
        let mut targets = urls
            .split(',')
            .map(|u| Self::parse_one(u.trim(), allow_remote))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let edges = targets.iter().map(|t| (t.addr, t.ws_url.clone())).collect();
        let mut first = targets.remove(0);
        first.edges = edges;
        Ok(first)
    }

    /// Parse and resolve `url` (`http://` or `ws://`; no TLS). Refuses non-loopback addresses
    /// unless `allow_remote`.
    fn parse_one(url: &str, allow_remote: bool) -> anyhow::Result<Target> {
        let (scheme, host, port) = split_url(url)?;
        if !matches!(scheme, "http" | "ws") {
            bail!(
                "unsupported scheme {scheme:?}: use http:// or ws:// (the bench speaks plain TCP)"
            );
        }
        let addr = match host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => (host, port)
                .to_socket_addrs()
                .with_context(|| format!("resolving {host}"))?
                .next()
                .with_context(|| format!("{host} resolves to nothing"))?,
        };
        if !allow_remote && !addr.ip().is_loopback() {
            bail!(
                "{url} resolves to {}, which is not a loopback address; the bench only loads servers on \
                 this machine unless --allow-remote is given",
                addr.ip()
            );
        }
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Target {
            addr,
            http_base: format!("http://{authority}"),
            ws_url: format!("ws://{authority}/ws"),
            edges: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080").unwrap(),
            ("http", "127.0.0.1", 8080)
        );
        assert_eq!(
            split_url("ws://localhost:9/ws?x=1").unwrap(),
            ("ws", "localhost", 9)
        );
        assert_eq!(
            split_url("http://[::1]:18080/").unwrap(),
            ("http", "::1", 18080)
        );
        assert_eq!(
            split_url("http://127.0.0.1").unwrap(),
            ("http", "127.0.0.1", 80)
        );
        assert!(split_url("127.0.0.1:8080").is_err());
        assert!(split_url("http://:80").is_err());
        assert!(split_url("http://a@127.0.0.1:80").is_err());
    }

    #[test]
    fn derives_endpoints() {
        let t = Target::parse("ws://127.0.0.1:18080/anything", false).unwrap();
        assert_eq!(t.addr, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(t.ws_url, "ws://127.0.0.1:18080/ws");
        assert_eq!(t.http_base, "http://127.0.0.1:18080");
        let t = Target::parse("http://[::1]:8080", false).unwrap();
        assert_eq!(t.ws_url, "ws://[::1]:8080/ws");
    }

    #[test]
    fn refuses_non_loopback_unless_allowed() {
        // Parsing only: nothing is sent anywhere.
        assert!(Target::parse("http://10.1.2.3:8080", false).is_err());
        assert!(Target::parse("http://192.168.1.1:8080", false).is_err());
        assert!(Target::parse("http://10.1.2.3:8080", true).is_ok());
        assert!(Target::parse("http://127.9.9.9:8080", false).is_ok());
        assert!(Target::parse("https://127.0.0.1:8080", false).is_err());
    }
}
