//! The webhook signature: `X-Tern-Signature: v1=<hex>` where `<hex>` is the HMAC-SHA256, keyed
//! with the shared secret, of `<timestamp>.<body>`, and `<timestamp>` (Unix seconds) is sent
//! as `X-Tern-Timestamp`. Receivers recompute it and reject old timestamps (replays).

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "x-tern-signature";
pub const TIMESTAMP_HEADER: &str = "x-tern-timestamp";
/// The outbox item id: the same on every retry, so receivers can de-duplicate.
pub const DELIVERY_HEADER: &str = "x-tern-delivery";

/// The `X-Tern-Signature` value for `body` sent at `timestamp`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Check a received signature (constant time) and that `timestamp` is within `tolerance_s`
/// of `now_s`. What a receiver does; here for tests and as the reference.
pub fn verify(
    secret: &[u8],
    timestamp: i64,
    body: &[u8],
    signature: &str,
    now_s: i64,
    tolerance_s: i64,
) -> bool {
    if (now_s - timestamp).abs() > tolerance_s {
        return false;
    }
    let Some(hex_sig) = signature.strip_prefix("v1=") else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_timestamp_and_body() {
        // RFC 4231-style check of the construction: HMAC-SHA256("key", "1.{}").
        let s = sign(b"key", 1, b"{}");
        assert!(s.starts_with("v1=") && s.len() == 3 + 64);
        assert!(verify(b"key", 1, b"{}", &s, 1, 300));
        assert!(!verify(b"other", 1, b"{}", &s, 1, 300));
        assert!(!verify(b"key", 1, b"{ }", &s, 1, 300));
        assert!(!verify(b"key", 2, b"{}", &s, 2, 300));
        // Too old.
        assert!(!verify(b"key", 1, b"{}", &s, 1000, 300));
        assert_ne!(sign(b"key", 1, b"{}"), sign(b"key", 2, b"{}"));
    }
}
