//! Whether external dependencies answer: a TCP connect to their endpoints, with a timeout.
//! (A connect is what can be checked without speaking each protocol; the setup Job and the
//! pods' readiness check the rest.)

use std::time::Duration;
use tokio::net::TcpStream;

/// `host:port` of a Redis URL (`redis://[user:pass@]host[:port][/db]`). Pure.
pub fn redis_endpoint(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = rest.split(['/', '?']).next()?;
    if hostport.is_empty() {
        return None;
    }
    let has_port = if let Some(stripped) = hostport.strip_prefix('[') {
        stripped.contains("]:")
    } else {
        hostport.contains(':')
    };
    Some(if has_port {
        hostport.to_string()
    } else {
        format!("{hostport}:6379")
    })
}

/// Ok when at least one endpoint accepts a TCP connection; else every error, joined.
pub async fn any_reachable(endpoints: &[String], timeout: Duration) -> Result<String, String> {
    if endpoints.is_empty() {
        return Err("no endpoints".into());
    }
    let attempts = endpoints.iter().map(|ep| async move {
        match tokio::time::timeout(timeout, TcpStream::connect(ep.as_str())).await {
            Ok(Ok(_)) => Ok(ep.clone()),
            Ok(Err(e)) => Err(format!("{ep}: {e}")),
            Err(_) => Err(format!("{ep}: no answer within {}s", timeout.as_secs_f32())),
        }
    });
    let results = futures::future::join_all(attempts).await;
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(ep) => return Ok(format!("{ep} reachable")),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls() {
        assert_eq!(
            redis_endpoint("redis://r:6380/0").as_deref(),
            Some("r:6380")
        );
        assert_eq!(
            redis_endpoint("rediss://u:p@w@r.example").as_deref(),
            Some("r.example:6379")
        );
        assert_eq!(
            redis_endpoint("redis://[::1]:7000").as_deref(),
            Some("[::1]:7000")
        );
        assert_eq!(
            redis_endpoint("redis://[::1]").as_deref(),
            Some("[::1]:6379")
        );
        assert_eq!(redis_endpoint("nonsense"), None);
    }

    #[tokio::test]
    async fn reachability_against_real_sockets() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = l.local_addr().unwrap().to_string();
        let closed = {
            let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l2.local_addr().unwrap().to_string()
        };
        let t = Duration::from_secs(2);
        assert!(
            any_reachable(&[closed.clone(), open.clone()], t)
                .await
                .is_ok()
        );
        let err = any_reachable(std::slice::from_ref(&closed), t)
            .await
            .unwrap_err();
        assert!(err.contains(&closed), "{err}");
        assert!(any_reachable(&[], t).await.is_err());
    }
}
