use crate::support::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn nothing_acknowledged_is_lost_across_kill_9() {
    let mut s = TestServer::start_with(&["--rate-burst", "1000"]).await;
    let chat = s.api(1).group(&[2, 3]).await;
    let mut a = s.ws(1).await;
    let mut b = s.ws(2).await;
    const N: usize = 300;
    for i in 0..N {
        let sender = if i % 2 == 0 { &mut a } else { &mut b };
        sender.send(json!({"type":"message","chat_id":chat,"content":format!("k{i}"),"client_msg_id":format!("k{i}")})).await;
    }
    // Collect acks from both, then kill -9 immediately: no drain, no flush.
    let mut acked = Vec::new();
    for ws in [&mut a, &mut b] {
        while acked.len() < N && ws.backlog.len() < 10_000 {
            match ws.next_frame(Duration::from_millis(1500)).await {
                Some(f) if f["type"] == "ack" => acked.push((
                    f["client_msg_id"].as_str().unwrap().to_string(),
                    f["seq"].as_u64().unwrap(),
                    f["message_id"].as_str().unwrap().to_string(),
                )),
                Some(_) => {}
                None => break,
            }
        }
    }
    assert_eq!(acked.len(), N);
    s.kill9();
    s.restart_ready().await;
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let h = s
            .api(3)
            .history(chat, &format!("after_seq={after}&limit=200"))
            .await;
        for m in h["messages"].as_array().unwrap() {
            all.push((
                m["client_msg_id"].as_str().unwrap().to_string(),
                m["seq"].as_u64().unwrap(),
                m["message_id"].as_str().unwrap().to_string(),
            ));
        }
        after = all.last().unwrap().1;
        if h["has_more"] == false {
            break;
        }
    }
    assert_eq!(
        all.iter().map(|m| m.1).collect::<Vec<_>>(),
        (1..=N as u64).collect::<Vec<_>>(),
        "gapless"
    );
    for a in &acked {
        assert!(all.contains(a), "acked message {a:?} lost or changed");
    }
    // Sequencing continues after the restart, and resends are still idempotent.
    let mut a = s.ws(1).await;
    let dup = a.send_msg(chat, "k0", "k0").await;
    assert_eq!(dup["seq"], acked.iter().find(|m| m.0 == "k0").unwrap().1);
    let next = a.send_msg(chat, "after restart", "post").await;
    assert_eq!(next["seq"], N as u64 + 1);
}

#[tokio::test]
async fn sigterm_drains_with_reconnect_and_exits_cleanly() {
    let mut s = TestServer::start_with(&["--reconnect-jitter-ms", "1500"]).await;
    let chat = s.api(1).direct(2).await;
    let mut a = s.ws(1).await;
    let ack = a.send_msg(chat, "before drain", "d1").await;
    let status = tokio::task::spawn_blocking({
        let pid = s.pid();
        move || {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
        }
    });
    let r = a.expect_within("reconnect", Duration::from_secs(5)).await;
    assert!(r["after_ms"].as_u64().unwrap() <= 1500);
    assert_eq!(a.close_code(Duration::from_secs(5)).await, Some(1012));
    status.await.unwrap();
    assert!(s.terminate_wait().success(), "exit code 0 after drain");
    s.restart_ready().await;
    let h = s.api(2).history(chat, "").await;
    assert_eq!(h["messages"][0]["message_id"], ack["message_id"]);
}

#[tokio::test]
async fn readiness_health_and_metrics() {
    let s = TestServer::start().await;
    assert_eq!(s.status("/healthz").await, 200);
    assert_eq!(s.status("/readyz").await, 200);
    let _a = s.ws(1).await;
    let _b = s.ws(2).await;
    assert_eq!(s.metric("chat_connections").await, 2.0);
    let text = s.metrics_text().await;
    for name in [
        "chat_messages_stored_total",
        "chat_deliveries_total",
        "chat_delivery_latency_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
}

#[test]
fn token_subcommand_uses_the_generated_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["token", "--user", "42", "--data-dir"])
        .arg(dir.path())
        .env_remove("CHAT_JWT_SECRET")
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let secret = std::fs::read_to_string(dir.path().join("jwt-secret")).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_required_spec_claims(&["exp", "sub"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(secret.trim().as_bytes()),
        &v,
    )
    .unwrap();
    assert_eq!(claims.claims["sub"], "42");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["token", "--user", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("positive"));
}
