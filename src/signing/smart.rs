//! SMART Backend Services keys and client assertions (what Epic and Cerner
//! require for system access): ES384 or RS384 private keys in PKCS#8 PEM,
//! their public JWKS for the EHR's app registration, and the signed JWT a
//! token request carries.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA384,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    Es384,
    Rs384,
}

impl KeyAlg {
    pub fn name(self) -> &'static str {
        match self {
            KeyAlg::Es384 => "ES384",
            KeyAlg::Rs384 => "RS384",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a PEM private key (PKCS#8, \"-----BEGIN PRIVATE KEY-----\")")]
    NotPem,
    #[error(
        "the key is neither a P-384 EC key (ES384) nor an RSA key of 2048 bits or more (RS384)"
    )]
    Unsupported,
    #[error("cannot generate or use the key")]
    Crypto,
}

/// A loaded private key, ready to sign client assertions. Debug shows no key.
pub struct SmartKey {
    alg: KeyAlg,
    ec: Option<EcdsaKeyPair>,
    rsa: Option<RsaKeyPair>,
    /// The public key as a JWK (with `kid`, `alg`, `use`).
    jwk: Value,
}

impl std::fmt::Debug for SmartKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SmartKey({}, kid {})", self.alg.name(), self.kid())
    }
}

impl SmartKey {
    /// Reads a PKCS#8 PEM private key; the algorithm is picked from the key.
    /// `kid` defaults to the key's RFC 7638 thumbprint.
    pub fn from_pem(pem: &str, kid: Option<&str>) -> Result<SmartKey, KeyError> {
        let der = pem_to_der(pem)?;
        if let Ok(ec) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &der) {
            let point = ec.public_key().as_ref();
            // Uncompressed point: 0x04 || X (48 bytes) || Y (48 bytes).
            if point.len() != 97 || point[0] != 4 {
                return Err(KeyError::Unsupported);
            }
            let jwk = json!({
                "crv": "P-384", "kty": "EC",
                "x": URL_SAFE_NO_PAD.encode(&point[1..49]),
                "y": URL_SAFE_NO_PAD.encode(&point[49..]),
            });
            return Ok(SmartKey::new(KeyAlg::Es384, Some(ec), None, jwk, kid));
        }
        let rsa = RsaKeyPair::from_pkcs8(&der).map_err(|_| KeyError::Unsupported)?;
        if rsa.public_modulus_len() < 256 {
            return Err(KeyError::Unsupported);
        }
        let c: PublicKeyComponents<Vec<u8>> = rsa.public_key().into();
        let jwk = json!({"e": URL_SAFE_NO_PAD.encode(&c.e), "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&c.n)});
        Ok(SmartKey::new(KeyAlg::Rs384, None, Some(rsa), jwk, kid))
    }

    fn new(
        alg: KeyAlg,
        ec: Option<EcdsaKeyPair>,
        rsa: Option<RsaKeyPair>,
        mut jwk: Value,
        kid: Option<&str>,
    ) -> SmartKey {
        // RFC 7638: SHA-256 of the required members, keys sorted, no spaces
        // (serde_json's map keeps them sorted).
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.to_string().as_bytes()));
        jwk["kid"] = Value::from(kid.unwrap_or(&thumbprint));
        jwk["alg"] = Value::from(alg.name());
        jwk["use"] = Value::from("sig");
        SmartKey { alg, ec, rsa, jwk }
    }

    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    pub fn kid(&self) -> &str {
        self.jwk["kid"].as_str().unwrap_or("")
    }

    /// `{"keys": [the public JWK]}`, for the EHR's app registration.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// The signed client assertion for one token request: `iss` = `sub` =
    /// the client id, `aud` = the token URL, `exp` 5 minutes ahead, a unique
    /// `jti`.
    pub fn client_assertion(&self, client_id: &str, token_url: &str) -> Result<String, KeyError> {
        let now = chrono::Utc::now().timestamp();
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|_| KeyError::Crypto)?;
        let header = json!({"alg": self.alg.name(), "kid": self.kid(), "typ": "JWT"});
        let claims = json!({
            "iss": client_id, "sub": client_id, "aud": token_url,
            "exp": now + 300, "iat": now,
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match (&self.ec, &self.rsa) {
            (Some(ec), _) => ec
                .sign(&rng, signing_input.as_bytes())
                .map_err(|_| KeyError::Crypto)?
                .as_ref()
                .to_vec(),
            (None, Some(rsa)) => {
                let mut sig = vec![0u8; rsa.public_modulus_len()];
                rsa.sign(&RSA_PKCS1_SHA384, &rng, signing_input.as_bytes(), &mut sig)
                    .map_err(|_| KeyError::Crypto)?;
                sig
            }
            (None, None) => return Err(KeyError::Crypto),
        };
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// A new private key as PKCS#8 PEM (P-384 for ES384, RSA 3072 for RS384).
pub fn generate_pem(alg: KeyAlg) -> Result<String, KeyError> {
    let der = match alg {
        KeyAlg::Es384 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| KeyError::Crypto)?
                .as_ref()
                .to_vec()
        }
        KeyAlg::Rs384 => RsaKeyPair::generate(KeySize::Rsa3072)
            .and_then(|k| k.as_der())
            .map_err(|_| KeyError::Crypto)?
            .as_ref()
            .to_vec(),
    };
    let b64 = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, KeyError> {
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN PRIVATE KEY-----")
        .and_then(|s| s.strip_suffix("-----END PRIVATE KEY-----"))
        .ok_or(KeyError::NotPem)?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(b64).map_err(|_| KeyError::NotPem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_sign_and_publish_a_jwks() {
        for alg in [KeyAlg::Es384, KeyAlg::Rs384] {
            let pem = generate_pem(alg).unwrap();
            let key = SmartKey::from_pem(&pem, None).unwrap();
            assert_eq!(key.alg(), alg);
            assert_eq!(key.kid().len(), 43, "a SHA-256 thumbprint");
            let jwks = key.jwks();
            assert_eq!(jwks["keys"][0]["alg"], alg.name());
            assert!(!format!("{key:?}").contains("PRIVATE"));
            let jwt = key.client_assertion("client", "https://ehr/token").unwrap();
            assert_eq!(jwt.split('.').count(), 3);
            let named = SmartKey::from_pem(&pem, Some("k1")).unwrap();
            assert_eq!(named.kid(), "k1");
        }
        assert_eq!(
            SmartKey::from_pem("nope", None).unwrap_err(),
            KeyError::NotPem
        );
    }
}
