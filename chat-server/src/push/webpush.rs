//! Web Push (RFC 8030) for browsers: the payload encrypted per RFC 8291 (`aes128gcm`, RFC 8188,
//! one record) to the subscription's `p256dh` key and `auth` secret, and the request
//! authorised with VAPID (RFC 8292: an ES256 JWT for the push service's origin).

use crate::error::{Error, Result};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

/// Record size announced in the header; one record holds the whole (small) payload.
const RECORD_SIZE: u32 = 4096;
/// Largest plaintext: one record minus the tag and the padding delimiter.
pub const MAX_PLAINTEXT: usize = RECORD_SIZE as usize - 16 - 1;
/// How long a VAPID token is valid (RFC 8292 allows up to 24 h).
const VAPID_TTL_S: i64 = 12 * 3600;

/// base64url without padding (what Web Push uses everywhere).
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode base64url or standard base64, padded or not (browsers and libraries differ).
pub fn unb64(s: &str) -> Result<Vec<u8>> {
    let s = s.trim();
    [URL_SAFE_NO_PAD, URL_SAFE, STANDARD_NO_PAD, STANDARD]
        .iter()
        .find_map(|e| e.decode(s).ok())
        .ok_or_else(|| Error::invalid("not base64url"))
}

fn random<const N: usize>() -> [u8; N] {
    rand::random()
}

/// A new random P-256 private key.
pub fn random_secret() -> SecretKey {
    loop {
        // Almost every 32-byte string is a valid scalar; retry the rare one that is not.
        if let Ok(k) = SecretKey::from_slice(&random::<32>()) {
            return k;
        }
    }
}

/// Uncompressed SEC1 encoding (65 bytes, `04 || X || Y`).
pub fn public_bytes(k: &PublicKey) -> Vec<u8> {
    k.to_encoded_point(false).as_bytes().to_vec()
}

/// A browser's push subscription, decoded.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub endpoint: String,
    pub ua_public: PublicKey,
    pub auth: Vec<u8>,
}

impl Subscription {
    pub fn parse(endpoint: &str, p256dh: &str, auth: &str) -> Result<Self> {
        let key = unb64(p256dh).map_err(|_| Error::invalid("keys.p256dh is not base64url"))?;
        let ua_public = PublicKey::from_sec1_bytes(&key)
            .map_err(|_| Error::invalid("keys.p256dh is not a P-256 public key"))?;
        let auth = unb64(auth).map_err(|_| Error::invalid("keys.auth is not base64url"))?;
        if auth.len() != 16 {
            return Err(Error::invalid("keys.auth must be 16 bytes"));
        }
        Ok(Subscription {
            endpoint: endpoint.to_string(),
            ua_public,
            auth,
        })
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .expect("HKDF output of at most 32 bytes");
}

/// The content encryption key and nonce of RFC 8291 section 3.4 / RFC 8188 section 2.2.
fn key_and_nonce(
    ecdh_secret: &[u8],
    auth: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    salt: &[u8],
) -> ([u8; 16], [u8; 12]) {
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    hkdf(auth, ecdh_secret, &key_info, &mut ikm);
    let mut cek = [0u8; 16];
    hkdf(salt, &ikm, b"Content-Encoding: aes128gcm\0", &mut cek);
    let mut nonce = [0u8; 12];
    hkdf(salt, &ikm, b"Content-Encoding: nonce\0", &mut nonce);
    (cek, nonce)
}

/// Encrypt `plaintext` for `sub` with a fresh sender key and salt.
pub fn encrypt(sub: &Subscription, plaintext: &[u8]) -> Result<Vec<u8>> {
    encrypt_with(sub, plaintext, &random_secret(), random::<16>())
}

/// Encrypt with a given sender key and salt (deterministic; for the RFC's test vector).
pub fn encrypt_with(
    sub: &Subscription,
    plaintext: &[u8],
    as_secret: &SecretKey,
    salt: [u8; 16],
) -> Result<Vec<u8>> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(Error::invalid("push payload too large for one record"));
    }
    let as_public = public_bytes(&as_secret.public_key());
    let ua_public = public_bytes(&sub.ua_public);
    let shared =
        p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), sub.ua_public.as_affine());
    let (cek, nonce) = key_and_nonce(
        shared.raw_secret_bytes(),
        &sub.auth,
        &ua_public,
        &as_public,
        &salt,
    );
    let mut record = plaintext.to_vec();
    record.push(2); // delimiter of the last (only) record; no padding
    let sealed = Aes128Gcm::new_from_slice(&cek)
        .expect("16-byte key")
        .encrypt(&Nonce::from(nonce), record.as_slice())
        .map_err(|_| Error::internal("aes-gcm encryption failed"))?;
    let mut body = Vec::with_capacity(86 + sealed.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(&as_public);
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// Decrypt an `aes128gcm` body with the subscription's private key and auth secret: what the
/// browser does. Here for tests and for anyone checking a receiver.
pub fn decrypt(ua_secret: &SecretKey, auth: &[u8], body: &[u8]) -> Result<Vec<u8>> {
    let bad = |why: &str| Error::invalid(format!("aes128gcm body: {why}"));
    if body.len() < 21 {
        return Err(bad("too short"));
    }
    let salt = &body[..16];
    let rs = u32::from_be_bytes(body[16..20].try_into().expect("4 bytes"));
    let idlen = body[20] as usize;
    if body.len() < 21 + idlen || idlen != 65 {
        return Err(bad("key id is not a P-256 public key"));
    }
    let as_public_bytes = &body[21..21 + idlen];
    let sealed = &body[21 + idlen..];
    if sealed.len() > rs as usize {
        return Err(bad("more than one record"));
    }
    let as_public = PublicKey::from_sec1_bytes(as_public_bytes).map_err(|_| bad("bad key id"))?;
    let ua_public = public_bytes(&ua_secret.public_key());
    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), as_public.as_affine());
    let (cek, nonce) = key_and_nonce(
        shared.raw_secret_bytes(),
        auth,
        &ua_public,
        as_public_bytes,
        salt,
    );
    let mut record = Aes128Gcm::new_from_slice(&cek)
        .expect("16-byte key")
        .decrypt(&Nonce::from(nonce), sealed)
        .map_err(|_| bad("authentication failed"))?;
    // Strip the padding: trailing zeros, then the delimiter (2 = last record).
    while record.last() == Some(&0) {
        record.pop();
    }
    match record.pop() {
        Some(2) => Ok(record),
        _ => Err(bad("no last-record delimiter")),
    }
}

/// The application server's VAPID key pair.
#[derive(Clone)]
pub struct Vapid {
    key: SigningKey,
    public_b64: String,
    subject: String,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid")
            .field("public_key", &self.public_b64)
            .field("subject", &self.subject)
            .finish()
    }
}

impl Vapid {
    /// From the private key as base64url of its 32-byte scalar (the format web-push tools
    /// print), and the contact (`mailto:` or `https:` URL) push services may use.
    pub fn from_private(private_b64: &str, subject: &str) -> Result<Self> {
        let raw = unb64(private_b64).map_err(|_| Error::invalid("VAPID key is not base64url"))?;
        let secret = SecretKey::from_slice(&raw)
            .map_err(|_| Error::invalid("VAPID key is not a P-256 private key (32 bytes)"))?;
        Ok(Self::from_secret(&secret, subject))
    }

    pub fn from_secret(secret: &SecretKey, subject: &str) -> Self {
        Vapid {
            key: SigningKey::from(secret),
            public_b64: b64(&public_bytes(&secret.public_key())),
            subject: subject.to_string(),
        }
    }

    /// A new key; returns it and its private part (base64url) to keep.
    pub fn generate(subject: &str) -> (Self, String) {
        let secret = random_secret();
        (Self::from_secret(&secret, subject), b64(&secret.to_bytes()))
    }

    /// The public key clients pass as `applicationServerKey` (base64url, 65 bytes).
    pub fn public_key(&self) -> &str {
        &self.public_b64
    }

    /// The `Authorization` header value for a request to `endpoint`: `vapid t=<jwt>, k=<key>`.
    pub fn authorization(&self, endpoint: &str, now_s: i64) -> Result<String> {
        let header = b64(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({
            "aud": audience(endpoint)?,
            "exp": now_s + VAPID_TTL_S,
            "sub": self.subject,
        });
        let claims = b64(claims.to_string().as_bytes());
        let signing_input = format!("{header}.{claims}");
        let sig: Signature = self.key.sign(signing_input.as_bytes());
        Ok(format!(
            "vapid t={signing_input}.{}, k={}",
            b64(&sig.to_bytes()),
            self.public_b64
        ))
    }
}

/// The origin of a push endpoint (`scheme://host[:port]`): the JWT's `aud`.
pub fn audience(endpoint: &str) -> Result<String> {
    let (scheme, rest) = endpoint
        .split_once("://")
        .ok_or_else(|| Error::invalid("endpoint is not a URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(Error::invalid("endpoint has no host"));
    }
    Ok(format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier;

    fn secret(b64: &str) -> SecretKey {
        SecretKey::from_slice(&unb64(b64).unwrap()).unwrap()
    }

    /// RFC 8291 appendix A.
    #[test]
    fn rfc8291_example() {
        let ua = secret("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94");
        let sender = secret("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw");
        let auth = "BTBZMqHH6r4Tts7J_aSIgg";
        let ua_public = b64(&public_bytes(&ua.public_key()));
        assert_eq!(
            ua_public,
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
        );
        let sub = Subscription::parse("https://push.example.net/x", &ua_public, auth).unwrap();
        let salt: [u8; 16] = unb64("DGv6ra1nlYgDCS1FRnbzlw").unwrap().try_into().unwrap();
        let plaintext = b"When I grow up, I want to be a watermelon";
        let body = encrypt_with(&sub, plaintext, &sender, salt).unwrap();
        assert_eq!(
            b64(&body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
        assert_eq!(decrypt(&ua, &sub.auth, &body).unwrap(), plaintext);
    }

    #[test]
    fn round_trip_with_random_keys_and_tampering_fails() {
        let ua = random_secret();
        let auth = random::<16>();
        let sub = Subscription::parse(
            "https://h/x",
            &b64(&public_bytes(&ua.public_key())),
            &b64(&auth),
        )
        .unwrap();
        let mut body = encrypt(&sub, br#"{"chat_id":1}"#).unwrap();
        assert_eq!(decrypt(&ua, &auth, &body).unwrap(), br#"{"chat_id":1}"#);
        let last = body.len() - 1;
        body[last] ^= 1;
        assert!(decrypt(&ua, &auth, &body).is_err());
        assert!(encrypt(&sub, &vec![b'x'; MAX_PLAINTEXT + 1]).is_err());
    }

    #[test]
    fn vapid_jwt_verifies_with_the_public_key() {
        let (v, private) = Vapid::generate("mailto:ops@example.com");
        let again = Vapid::from_private(&private, "mailto:ops@example.com").unwrap();
        assert_eq!(v.public_key(), again.public_key());
        let h = v
            .authorization("https://push.example.net:8443/wpush/abc?x=1", 1000)
            .unwrap();
        let rest = h.strip_prefix("vapid t=").unwrap();
        let (jwt, k) = rest.split_once(", k=").unwrap();
        assert_eq!(k, v.public_key());
        let parts: Vec<&str> = jwt.split('.').collect();
        let claims: serde_json::Value = serde_json::from_slice(&unb64(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://push.example.net:8443");
        assert_eq!(claims["exp"], 1000 + VAPID_TTL_S);
        assert_eq!(claims["sub"], "mailto:ops@example.com");
        let key = VerifyingKey::from_sec1_bytes(&unb64(k).unwrap()).unwrap();
        let sig = Signature::from_slice(&unb64(parts[2]).unwrap()).unwrap();
        key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn keys_in_either_base64_alphabet() {
        let ua = random_secret();
        let p = public_bytes(&ua.public_key());
        let std = STANDARD.encode(&p);
        let auth = STANDARD.encode([7u8; 16]);
        assert!(Subscription::parse("https://h/", &std, &auth).is_ok());
        assert!(Subscription::parse("https://h/", &std, "AAAA").is_err());
        assert!(Subscription::parse("https://h/", "BAAA", &auth).is_err());
    }
}
