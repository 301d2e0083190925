//! Standard Webhooks v1 signatures: the `webhook-signature` header a hook's
//! receiver checks, over `"{webhook-id}.{webhook-timestamp}.{raw body}"`.
//!
//! - `whsec_<base64 key>`: HMAC-SHA256, signatures `v1,<base64>`.
//! - `whsk_<base64 seed>` / `whpk_<base64 public key>`: Ed25519, signatures
//!   `v1a,<base64>`; the bridge signs with `whsk_`, receivers verify with `whpk_`.
//!
//! Several keys give several signatures separated by single spaces, so that a
//! key can be rotated: the receiver accepts the message if any one is valid.
//!
//! Secrets never appear in `Debug` output or in error messages.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::ed25519::signature::MultipartSigner as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

const SYMMETRIC_PREFIX: &str = "whsec_";
const SECRET_KEY_PREFIX: &str = "whsk_";
const PUBLIC_KEY_PREFIX: &str = "whpk_";

/// The Standard Webhooks spec asks for symmetric secrets of 24 to 64 bytes.
const MIN_SYMMETRIC_LEN: usize = 24;
const MAX_SYMMETRIC_LEN: usize = 64;
/// `generate_symmetric` makes secrets of this many random bytes.
const GENERATED_SYMMETRIC_LEN: usize = 32;

/// A key that cannot be parsed or made. The messages name the key's kind and
/// what is wrong with it, never any of its text.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("the key does not start with {expected}")]
    BadPrefix { expected: &'static str },
    #[error(
        "a whpk_ key is a public key, which only verifies; the bridge signs with a whsec_ or whsk_ key"
    )]
    PublicKeyCannotSign,
    #[error(
        "a whsk_ key is a secret signing key; a receiver verifies with its whpk_ public key instead"
    )]
    SecretKeyForVerifying,
    #[error(
        "the {prefix} key's text after its prefix is not valid base64 (standard alphabet, padded)"
    )]
    Base64 { prefix: &'static str },
    #[error("the {prefix} key is {len} bytes long; it must be {expected}")]
    KeyLength {
        prefix: &'static str,
        len: usize,
        expected: &'static str,
    },
    #[error("the 64-byte whsk_ key's public half does not match its seed")]
    KeypairMismatch,
    #[error("the whpk_ key is not a valid Ed25519 public key")]
    InvalidPublicKey,
    #[error("the system's random number generator failed: {0}")]
    Rng(getrandom::Error),
}

/// Why a receiver would refuse a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a unix time in whole seconds")]
    BadTimestamp,
    /// The timestamp is outside the tolerance, in the past or in the future.
    #[error(
        "webhook-timestamp {timestamp} is {skew_secs}s away from now, outside the tolerance of {tolerance_secs}s"
    )]
    Expired {
        timestamp: i64,
        /// `now - timestamp`: negative when the timestamp is in the future.
        skew_secs: i128,
        tolerance_secs: u64,
    },
    #[error("no signature in webhook-signature is valid for any of the keys")]
    NoValidSignature,
}

/// An HMAC-SHA256 key, already keyed (a `whsec_` secret).
#[derive(Clone)]
pub struct HmacKey(Hmac<Sha256>);

/// An Ed25519 signing key (a `whsk_` secret).
#[derive(Clone)]
pub struct Ed25519SecretKey(ed25519_dalek::SigningKey);

/// An Ed25519 public key (a `whpk_` key).
#[derive(Clone)]
pub struct Ed25519PublicKey(ed25519_dalek::VerifyingKey);

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

impl fmt::Debug for Ed25519SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ed25519SecretKey(..)")
    }
}

impl fmt::Debug for Ed25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ed25519PublicKey({})", encode_public(&self.0))
    }
}

/// A key the bridge signs with. Its `Debug` shows only the kind of key.
#[derive(Clone)]
pub enum SigningKey {
    Hmac(HmacKey),
    Ed25519(Ed25519SecretKey),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningKey::Hmac(_) => f.write_str("SigningKey::Hmac(..)"),
            SigningKey::Ed25519(_) => f.write_str("SigningKey::Ed25519(..)"),
        }
    }
}

impl SigningKey {
    /// Parses a `whsec_...` (HMAC) or `whsk_...` (Ed25519) secret. A `whsk_`
    /// key is the 32-byte seed, or the 64-byte seed followed by its public key.
    /// Errors never echo the secret.
    pub fn parse(secret: &str) -> Result<SigningKey, SignatureError> {
        if let Some(b64) = secret.strip_prefix(SYMMETRIC_PREFIX) {
            return Ok(SigningKey::Hmac(parse_hmac(b64)?));
        }
        if let Some(b64) = secret.strip_prefix(SECRET_KEY_PREFIX) {
            let bytes = decode(b64, SECRET_KEY_PREFIX)?;
            let key = if let Ok(seed) = <&[u8; 32]>::try_from(bytes.as_slice()) {
                ed25519_dalek::SigningKey::from_bytes(seed)
            } else if let Ok(pair) = <&[u8; 64]>::try_from(bytes.as_slice()) {
                ed25519_dalek::SigningKey::from_keypair_bytes(pair)
                    .map_err(|_| SignatureError::KeypairMismatch)?
            } else {
                return Err(SignatureError::KeyLength {
                    prefix: SECRET_KEY_PREFIX,
                    len: bytes.len(),
                    expected: "32 bytes (a seed) or 64 bytes (seed and public key)",
                });
            };
            return Ok(SigningKey::Ed25519(Ed25519SecretKey(key)));
        }
        if secret.starts_with(PUBLIC_KEY_PREFIX) {
            return Err(SignatureError::PublicKeyCannotSign);
        }
        Err(SignatureError::BadPrefix {
            expected: "whsec_ or whsk_",
        })
    }

    /// For a `whsk_` key: the `whpk_...` public key to give the receiver.
    /// `None` for a `whsec_` key, which the receiver shares as it is.
    pub fn public_key(&self) -> Option<String> {
        match self {
            SigningKey::Hmac(_) => None,
            SigningKey::Ed25519(k) => Some(encode_public(&k.0.verifying_key())),
        }
    }
}

/// A key a receiver verifies with: `whsec_...` (shared) or `whpk_...` (public).
#[derive(Clone, Debug)]
pub enum VerifyingKey {
    Hmac(HmacKey),
    Ed25519(Ed25519PublicKey),
}

impl VerifyingKey {
    /// Parses a `whsec_...` or `whpk_...` key. Errors never echo the key.
    pub fn parse(key: &str) -> Result<VerifyingKey, SignatureError> {
        if let Some(b64) = key.strip_prefix(SYMMETRIC_PREFIX) {
            return Ok(VerifyingKey::Hmac(parse_hmac(b64)?));
        }
        if let Some(b64) = key.strip_prefix(PUBLIC_KEY_PREFIX) {
            let bytes = decode(b64, PUBLIC_KEY_PREFIX)?;
            let raw =
                <&[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| SignatureError::KeyLength {
                    prefix: PUBLIC_KEY_PREFIX,
                    len: bytes.len(),
                    expected: "32 bytes",
                })?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(raw)
                .map_err(|_| SignatureError::InvalidPublicKey)?;
            return Ok(VerifyingKey::Ed25519(Ed25519PublicKey(key)));
        }
        if key.starts_with(SECRET_KEY_PREFIX) {
            return Err(SignatureError::SecretKeyForVerifying);
        }
        Err(SignatureError::BadPrefix {
            expected: "whsec_ or whpk_",
        })
    }
}

/// The `webhook-signature` header value for these keys: one signature per key,
/// in the keys' order, separated by single spaces. Empty for no keys.
pub fn sign(keys: &[SigningKey], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let prefix = signed_prefix(msg_id, &timestamp.to_string());
    let mut header = String::new();
    for key in keys {
        if !header.is_empty() {
            header.push(' ');
        }
        match key {
            SigningKey::Hmac(k) => {
                let mut mac = k.0.clone();
                mac.update(prefix.as_bytes());
                mac.update(body);
                header.push_str("v1,");
                BASE64.encode_string(mac.finalize().into_bytes(), &mut header);
            }
            SigningKey::Ed25519(k) => {
                let sig = k.0.multipart_sign(&[prefix.as_bytes(), body]);
                header.push_str("v1a,");
                BASE64.encode_string(sig.to_bytes(), &mut header);
            }
        }
    }
    header
}

/// Verifies a request the way a receiver should: `timestamp` (the
/// `webhook-timestamp` header) within `tolerance` of `now` (unix seconds) in
/// either direction, and at least one signature in `header` (the
/// `webhook-signature` header) valid for at least one key: `v1` against
/// `whsec_` keys, `v1a` against `whpk_` keys. Signatures of other versions,
/// or that are not base64, are ignored. HMACs are compared in constant time;
/// Ed25519 signatures are checked strictly (no malleable or small-order forms).
pub fn verify(
    keys: &[VerifyingKey],
    msg_id: &str,
    timestamp: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::BadTimestamp);
    }
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = i128::from(now) - i128::from(ts);
    let tolerance_secs = tolerance.as_secs();
    if skew.unsigned_abs() > u128::from(tolerance_secs) {
        return Err(VerifyError::Expired {
            timestamp: ts,
            skew_secs: skew,
            tolerance_secs,
        });
    }

    let prefix = signed_prefix(msg_id, timestamp);
    // Ed25519's strict check takes the message whole; built on first need.
    let mut whole: Option<Vec<u8>> = None;
    for (version, sig_b64) in header
        .split(' ')
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.split_once(','))
    {
        match version {
            "v1" => {
                let Ok(tag) = BASE64.decode(sig_b64) else {
                    continue;
                };
                for key in keys {
                    if let VerifyingKey::Hmac(k) = key {
                        let mut mac = k.0.clone();
                        mac.update(prefix.as_bytes());
                        mac.update(body);
                        if mac.verify_slice(&tag).is_ok() {
                            return Ok(());
                        }
                    }
                }
            }
            "v1a" => {
                let Ok(raw) = BASE64.decode(sig_b64) else {
                    continue;
                };
                let Ok(sig) = ed25519_dalek::Signature::from_slice(&raw) else {
                    continue;
                };
                for key in keys {
                    if let VerifyingKey::Ed25519(k) = key {
                        let message = whole.get_or_insert_with(|| {
                            let mut m = Vec::with_capacity(prefix.len() + body.len());
                            m.extend_from_slice(prefix.as_bytes());
                            m.extend_from_slice(body);
                            m
                        });
                        if k.0.verify_strict(message, &sig).is_ok() {
                            return Ok(());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Err(VerifyError::NoValidSignature)
}

/// A new symmetric secret: `whsec_` and the base64 of 32 random bytes.
pub fn generate_symmetric() -> Result<String, SignatureError> {
    let mut key = [0u8; GENERATED_SYMMETRIC_LEN];
    getrandom::fill(&mut key).map_err(SignatureError::Rng)?;
    Ok(format!("{SYMMETRIC_PREFIX}{}", BASE64.encode(key)))
}

/// A new Ed25519 pair: (`whsk_` and the base64 of the 32-byte seed, `whpk_`
/// and the base64 of the public key). The bridge signs with the first; the
/// receiver verifies with the second.
pub fn generate_asymmetric() -> Result<(String, String), SignatureError> {
    let mut seed = [0u8; ed25519_dalek::SECRET_KEY_LENGTH];
    getrandom::fill(&mut seed).map_err(SignatureError::Rng)?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    Ok((
        format!("{SECRET_KEY_PREFIX}{}", BASE64.encode(seed)),
        encode_public(&key.verifying_key()),
    ))
}

fn parse_hmac(b64: &str) -> Result<HmacKey, SignatureError> {
    let bytes = decode(b64, SYMMETRIC_PREFIX)?;
    let length_error = || SignatureError::KeyLength {
        prefix: SYMMETRIC_PREFIX,
        len: bytes.len(),
        expected: "24 to 64 bytes",
    };
    if !(MIN_SYMMETRIC_LEN..=MAX_SYMMETRIC_LEN).contains(&bytes.len()) {
        return Err(length_error());
    }
    Hmac::<Sha256>::new_from_slice(&bytes)
        .map(HmacKey)
        .map_err(|_| length_error())
}

/// Base64 (standard alphabet, padded). The decoder's own error is dropped: it
/// names the offending byte, which would be a piece of the secret.
fn decode(b64: &str, prefix: &'static str) -> Result<Vec<u8>, SignatureError> {
    BASE64
        .decode(b64)
        .map_err(|_| SignatureError::Base64 { prefix })
}

fn encode_public(key: &ed25519_dalek::VerifyingKey) -> String {
    format!("{PUBLIC_KEY_PREFIX}{}", BASE64.encode(key.as_bytes()))
}

/// `"{id}.{timestamp}."`: the signed content up to the body.
fn signed_prefix(msg_id: &str, timestamp: &str) -> String {
    format!("{msg_id}.{timestamp}.")
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;
