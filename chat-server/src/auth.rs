//! HS256 JWT authentication (PROTOCOL.md "Authentication").

use crate::error::{Error, Result};
use crate::model::{MAX_ID, UserId};
use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    /// The user's display name, set by the app's own auth service (optional). Any JSON value
    /// is accepted here, so a bad `name` never makes a valid token invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<serde_json::Value>,
}

/// Who a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    /// The token's `name` claim when it is a valid name ([`crate::protocol::check_name`]); an
    /// invalid one is ignored (logged), not an authentication failure.
    pub name: Option<String>,
}

/// Verifies and mints tokens with one shared secret. Cloning is cheap (the keys are shared),
/// so handler states carry their own copy.
#[derive(Clone)]
pub struct Auth(Arc<Keys>);

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Auth(Arc::new(Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }))
    }

    /// Mint a token for `user_id` valid for `ttl_s` seconds.
    pub fn mint(&self, user_id: UserId, ttl_s: u64) -> Result<String> {
        let now = unix_now();
        let claims = Claims {
            sub: user_id.to_string(),
            exp: now + ttl_s,
            iat: Some(now),
            name: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.0.encoding)
            .map_err(Error::internal)
    }

    /// The user id a valid token names.
    pub fn verify(&self, token: &str) -> Result<UserId> {
        self.identify(token).map(|i| i.user_id)
    }

    /// The user a valid token names, with the token's `name` claim if it carries a valid one.
    pub fn identify(&self, token: &str) -> Result<Identity> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.0.decoding, &self.0.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired; get a new one",
                    ErrorKind::InvalidSignature => "the token's signature is not valid",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is malformed or not an HS256 JWT",
                };
                Error::Unauthenticated(why.into())
            })?;
        let user_id = match data.claims.sub.parse::<u64>() {
            Ok(id) if id > 0 && id <= MAX_ID => id,
            _ => {
                return Err(Error::Unauthenticated(
                    "the token's sub must be a positive user id as a decimal string".into(),
                ));
            }
        };
        let name = match data.claims.name {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(n)) => match crate::protocol::check_name(&n) {
                Ok(()) => Some(n),
                Err(e) => {
                    tracing::debug!(user_id, cause = %e, "ignoring the token's name claim");
                    None
                }
            },
            Some(_) => {
                tracing::debug!(user_id, "ignoring a name claim that is not a string");
                None
            }
        };
        Ok(Identity { user_id, name })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Pull a bearer token from an `Authorization` header value or a `token` query parameter.
pub fn bearer(header: Option<&str>, query_token: Option<&str>) -> Option<String> {
    if let Some(h) = header
        && let Some(t) = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    {
        return Some(t.trim().to_string());
    }
    query_token.map(str::to_string)
}

/// The authenticated caller of an HTTP handler (`Authorization: Bearer`, or `?token=`), in any
/// router whose state gives an [`Auth`].
pub struct Caller(pub UserId);

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Auth: FromRef<S>,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, st: &S) -> Result<Self> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let query_token = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(str::to_string)
        });
        let token = bearer(header, query_token.as_deref()).ok_or_else(|| {
            Error::Unauthenticated("missing token: send Authorization: Bearer <jwt>".into())
        })?;
        Ok(Caller(Auth::from_ref(st).verify(&token)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let auth = Auth::new(b"secret");
        let t = auth.mint(42, 60).unwrap();
        assert_eq!(auth.verify(&t).unwrap(), 42);
        assert_eq!(
            Auth::new(b"other").verify(&t).unwrap_err().code(),
            "unauthenticated"
        );
        assert!(auth.verify("garbage").is_err());
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "42".into(),
                exp: unix_now() - 3600,
                iat: None,
                name: None,
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(
            auth.verify(&expired)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
        let named = |name: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &Claims {
                    sub: "7".into(),
                    exp: unix_now() + 60,
                    iat: None,
                    name: Some(name),
                },
                &EncodingKey::from_secret(b"secret"),
            )
            .unwrap()
        };
        let id = auth.identify(&named("Ada".into())).unwrap();
        assert_eq!((id.user_id, id.name.as_deref()), (7, Some("Ada")));
        // A bad name claim is ignored; the token stays valid.
        for bad in [
            serde_json::json!(5),
            "a\u{7}b".into(),
            "x".repeat(65).into(),
        ] {
            assert_eq!(auth.identify(&named(bad)).unwrap().name, None);
        }
        let bad_sub = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "alice".into(),
                exp: unix_now() + 60,
                iat: None,
                name: None,
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(auth.verify(&bad_sub).is_err());
    }
}
