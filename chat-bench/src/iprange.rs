//! Source addresses for client sockets: `--source-ips 127.0.0.2-127.0.0.40,127.0.1.1`.
//!
//! One source address runs out of ephemeral ports near 28k connections to one destination, so
//! large runs bind each client socket to one of several loopback addresses, round-robin.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// Largest list accepted: far more than any run here needs, small enough to keep in memory.
const MAX_ADDRESSES: usize = 65_536;

/// A non-empty, ordered list of source addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIps(Vec<IpAddr>);

impl SourceIps {
    /// The address for the `i`-th connection (round-robin).
    pub fn pick(&self, i: usize) -> IpAddr {
        self.0[i % self.0.len()]
    }

    pub fn all(&self) -> &[IpAddr] {
        &self.0
    }
}

impl fmt::Display for SourceIps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            [first, .., last] => write!(f, "{first}..{last} ({} addresses)", self.0.len()),
            [] => write!(f, "(none)"),
        }
    }
}

impl FromStr for SourceIps {
    type Err = String;

    /// Comma-separated items, each an address or an inclusive IPv4 range `A-B`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('-') {
                Some((a, b)) => {
                    let a: Ipv4Addr = a
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad address {a:?} in {item:?}"))?;
                    let b: Ipv4Addr = b
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad address {b:?} in {item:?}"))?;
                    let (lo, hi) = (u32::from(a), u32::from(b));
                    if lo > hi {
                        return Err(format!("range {item:?} runs backwards"));
                    }
                    if (hi - lo) as usize >= MAX_ADDRESSES
                        || out.len() + (hi - lo) as usize >= MAX_ADDRESSES
                    {
                        return Err(format!("more than {MAX_ADDRESSES} source addresses"));
                    }
                    out.extend((lo..=hi).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
                }
                None => {
                    let ip: IpAddr = item.parse().map_err(|_| format!("bad address {item:?}"))?;
                    out.push(ip);
                }
            }
        }
        if out.is_empty() {
            return Err("no source address given".into());
        }
        if out.len() > MAX_ADDRESSES {
            return Err(format!("more than {MAX_ADDRESSES} source addresses"));
        }
        Ok(SourceIps(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_single_addresses() {
        let ips: SourceIps = "127.0.0.2-127.0.0.4, 127.0.1.1".parse().unwrap();
        let want: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ips.all(), want.as_slice());
        assert_eq!(ips.to_string(), "127.0.0.2..127.0.1.1 (4 addresses)");
    }

    #[test]
    fn ranges_cross_octet_boundaries() {
        let ips: SourceIps = "127.0.0.254-127.0.1.1".parse().unwrap();
        assert_eq!(ips.all().len(), 4);
        assert_eq!(ips.pick(3), "127.0.1.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn pick_is_round_robin() {
        let ips: SourceIps = "127.0.0.2-127.0.0.40".parse().unwrap();
        assert_eq!(ips.all().len(), 39);
        assert_eq!(ips.pick(0), ips.pick(39));
        assert_ne!(ips.pick(0), ips.pick(1));
        assert_eq!(ips.pick(40).to_string(), "127.0.0.3");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            ",",
            "127.0.0.5-127.0.0.2",
            "127.0.0.x",
            "127.0.0.1-::1",
            "0.0.0.0-255.255.255.255",
        ] {
            assert!(
                bad.parse::<SourceIps>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn accepts_ipv6_single_addresses() {
        let ips: SourceIps = "::1".parse().unwrap();
        assert_eq!(ips.to_string(), "::1");
    }
}
