//! Retrying: the start-up wait for services that start together with us, and the backoff
//! of background work that retries a failed step.

use std::future::Future;
use std::time::Duration;

/// Call `connect` until it succeeds or `wait` has passed, pausing `pause` between attempts
/// and logging each failure. The error after the deadline names `what` and the cause.
pub async fn until<T, E, F, Fut>(
    wait: Duration,
    pause: Duration,
    what: &str,
    mut connect: F,
) -> anyhow::Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match connect().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(cause = %e, "{what} not ready yet; retrying");
                tokio::time::sleep(pause).await;
            }
            Err(e) => anyhow::bail!("{what}: {e}"),
        }
    }
}

/// The pause before retry number `attempt` (0-based): `base` doubled each time, at most
/// `max`.
pub fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = Duration::from_millis;
        let got: Vec<Duration> = (0..6).map(|a| backoff(ms(200), a, ms(2000))).collect();
        assert_eq!(
            got,
            vec![ms(200), ms(400), ms(800), ms(1600), ms(2000), ms(2000)]
        );
        assert_eq!(backoff(ms(1), 99, ms(5)), ms(5));
    }

    #[tokio::test]
    async fn until_returns_the_first_success_and_gives_up_after_the_deadline() {
        let mut n = 0;
        let v = until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            "thing",
            || {
                n += 1;
                let n = n;
                async move { if n < 3 { Err("not yet") } else { Ok(n) } }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 3);
        let e = until(
            Duration::ZERO,
            Duration::from_millis(1),
            "thing",
            || async { Err::<(), _>("down") },
        )
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "thing: down");
    }
}
