//! Signed, expiring media URLs: `/v1/media/{id}?variant=…&expires=…&sig=…`, where `sig` is an
//! HMAC-SHA256 (key derived from the server secret) over the id, the variant and the expiry.
//! Anyone holding the URL may read that one variant until it expires, without a token, so a
//! CDN can cache it. Expiries are rounded up to a granularity so that everyone asking within
//! one window gets the same URL (one CDN cache entry). Pure; no I/O.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks media URLs.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer whose key is derived from `secret` (the server's JWT secret), so that tokens
    /// and URL signatures never share a key.
    pub fn new(secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"tern media url signing v1");
        Signer {
            key: mac.finalize().into_bytes().to_vec(),
        }
    }

    fn mac(&self, media_id: &str, variant: &str, expires: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("any key length");
        mac.update(media_id.as_bytes());
        mac.update(b"\n");
        mac.update(variant.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The `sig` value for one variant of a media until `expires` (Unix seconds).
    pub fn sign(&self, media_id: &str, variant: &str, expires: i64) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(media_id, variant, expires).finalize().into_bytes())
    }

    /// Whether `sig` is valid for this media, variant and expiry, and `now` (Unix seconds) is
    /// before the expiry. Constant-time comparison.
    pub fn verify(&self, media_id: &str, variant: &str, expires: i64, sig: &str, now: i64) -> bool {
        if now >= expires {
            return false;
        }
        let Ok(raw) = URL_SAFE_NO_PAD.decode(sig) else {
            return false;
        };
        self.mac(media_id, variant, expires)
            .verify_slice(&raw)
            .is_ok()
    }
}

/// The expiry of a URL asked for at `now` with lifetime `ttl`: `now + ttl` rounded up to a
/// multiple of `granularity` seconds (so many requests share one URL and one cache entry).
pub fn expiry(now: i64, ttl: i64, granularity: i64) -> i64 {
    let t = now + ttl.max(1);
    let g = granularity.max(1);
    (t + g - 1) / g * g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_bound_to_id_variant_and_expiry() {
        let s = Signer::new(b"server-secret");
        let sig = s.sign("m1", "main", 2000);
        assert!(s.verify("m1", "main", 2000, &sig, 1999));
        assert!(!s.verify("m1", "main", 2000, &sig, 2000), "expired");
        assert!(!s.verify("m2", "main", 2000, &sig, 1000), "other media");
        assert!(
            !s.verify("m1", "thumbnail", 2000, &sig, 1000),
            "other variant"
        );
        assert!(!s.verify("m1", "main", 2001, &sig, 1000), "other expiry");
        assert!(!s.verify("m1", "main", 2000, "not base64!", 1000));
        let other = Signer::new(b"another-secret");
        assert!(!other.verify("m1", "main", 2000, &sig, 1000), "other key");
    }

    #[test]
    fn expiries_are_rounded_up_to_share_urls() {
        assert_eq!(expiry(1000, 3600, 600), 4800);
        assert_eq!(expiry(1001, 3600, 600), 4800);
        assert_eq!(expiry(1200, 3600, 600), 4800);
        assert_eq!(expiry(1201, 3600, 600), 5400);
        assert_eq!(expiry(5, 10, 1), 15);
    }
}
