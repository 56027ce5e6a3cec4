//! Buyer tokens (`BUYER_AUTH=jwt`) as a shop's identity provider mints them, with the
//! `jsonwebtoken` crate, and key pairs made by `openssl` for the public-key algorithms.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::{AppOptions, client::now_unix};

/// The HS256 key of the test APIs that run with buyer tokens (`BUYER_JWT_SECRET`).
pub const JWT_SECRET: &str = "test-buyer-tokens-hs256-key-of-40-bytes!";

/// Options for an API whose buyers are known by HS256 tokens signed with [`JWT_SECRET`].
pub fn jwt_options() -> AppOptions {
    AppOptions {
        extra_env: vec![
            ("BUYER_AUTH", "jwt".into()),
            ("BUYER_JWT_SECRET", JWT_SECRET.into()),
        ],
        ..Default::default()
    }
}

/// A token for `sub`, valid for an hour, signed HS256 with [`JWT_SECRET`].
pub fn buyer_token(sub: &str) -> String {
    sign_hs256(JWT_SECRET.as_bytes(), &claims(sub))
}

/// The claims of a token for `sub` that is valid now, for an hour.
pub fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now_unix() + 3600, "iat": now_unix()})
}

pub fn sign_hs256(key: &[u8], claims: &Value) -> String {
    let key = EncodingKey::from_secret(key).expect("an HMAC key");
    sign(&key, Algorithm::HS256, None, claims)
}

/// `claims` signed with `key` for `alg`, with key id `kid`.
pub fn sign(key: &EncodingKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign a token")
}

/// A token with `alg: none` and no signature: what a forger sends.
pub fn unsigned_token(claims: &Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

/// A key pair for RS256, ES256 or EdDSA, made by `openssl` (PKCS#8 private, SPKI public).
pub struct KeyPair {
    pub alg: Algorithm,
    pub private_pem: String,
    pub public_pem: String,
}

impl KeyPair {
    pub fn generate(alg: Algorithm) -> Self {
        let args: &[&str] = match alg {
            Algorithm::RS256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::EdDSA => &["-algorithm", "ed25519"],
            other => panic!("no key pair for {other:?}"),
        };
        let private = openssl(&[&["genpkey"], args].concat(), None);
        let public = openssl(&["pkey", "-pubout"], Some(&private));
        Self {
            alg,
            private_pem: private,
            public_pem: public,
        }
    }

    pub fn encoding_key(&self) -> EncodingKey {
        let pem = self.private_pem.as_bytes();
        match self.alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            _ => EncodingKey::from_ed_pem(pem),
        }
        .expect("a private key")
    }

    /// A token for `claims` signed with this key, with key id `kid`.
    pub fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        sign(&self.encoding_key(), self.alg, kid, claims)
    }

    /// The public key as one JWK of a JWKS, with key id `kid`.
    pub fn jwk(&self, kid: &str) -> Value {
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.encoding_key(), self.alg)
            .expect("a JWK");
        let mut jwk = serde_json::to_value(jwk).expect("JWK as JSON");
        jwk["kid"] = Value::String(kid.to_owned());
        jwk
    }
}

fn openssl(args: &[&str], input: Option<&str>) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl (Debian's openssl package)");
    if let Some(input) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write to openssl");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?} failed");
    String::from_utf8(out.stdout).expect("PEM text")
}
