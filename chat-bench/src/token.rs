//! Client tokens minted locally: HS256 JWTs with `sub` = user id (decimal string) and `exp`,
//! signed with the server's secret, so a run needs no HTTP round trip per user.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
}

/// Token validity: long enough for any run.
const TTL_S: u64 = 24 * 3600;

pub struct TokenMint {
    key: EncodingKey,
    header: Header,
}

impl TokenMint {
    pub fn new(secret: &str) -> Self {
        TokenMint {
            key: EncodingKey::from_secret(secret.as_bytes()),
            header: Header::new(Algorithm::HS256),
        }
    }

    pub fn mint(&self, user_id: u64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: user_id.to_string(),
            exp: now + TTL_S,
            iat: now,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
            .expect("HS256 signing of plain claims cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[derive(serde::Deserialize)]
    struct Decoded {
        sub: String,
        exp: u64,
    }

    #[test]
    fn mints_tokens_the_server_accepts() {
        let t = TokenMint::new("benchsecret").mint(1_000_042);
        let mut v = Validation::new(Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        let d = jsonwebtoken::decode::<Decoded>(&t, &DecodingKey::from_secret(b"benchsecret"), &v)
            .unwrap();
        assert_eq!(d.claims.sub, "1000042");
        assert!(d.claims.exp > 0);
        assert!(
            jsonwebtoken::decode::<Decoded>(&t, &DecodingKey::from_secret(b"other"), &v).is_err()
        );
        // Query-string safe without escaping.
        assert!(
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
    }
}
