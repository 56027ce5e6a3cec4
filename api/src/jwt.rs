//! Buyer tokens (`BUYER_AUTH=jwt`): JWTs from the shop's identity provider, verified with the
//! `jsonwebtoken` crate.
//!
//! A token is accepted when its signature verifies with a configured key *for the algorithm
//! that key is for*: HS256 with `BUYER_JWT_SECRET`; RS256, ES256 or EdDSA with a public key of
//! `BUYER_JWT_PUBLIC_KEYS` (a JWKS or a PEM file). The algorithm named in the token's header
//! only picks among those keys, so `alg: none`, and HS256 "signed" with a public key, find no
//! key. `exp` is required, `nbf` is honoured, both with 60 s of leeway; `iss` and `aud` must
//! match when configured. The buyer is `sub`.
//!
//! The public key file is looked at every few seconds and read again when it changed, so keys
//! rotate without a restart; a file that cannot be read or parsed keeps the keys in use.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use entity::types::BuyerId;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm},
};
use secrecy::{ExposeSecret, SecretString};

/// Clock skew allowed on `exp` and `nbf`, either way.
pub const LEEWAY_SECS: u64 = 60;
/// How often the public key file is looked at (the contract: read again within 60 s).
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Why a token was refused. Logged at debug level only; the client is told 401 and no more.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWT: {0}")]
    Malformed(jsonwebtoken::errors::Error),
    #[error("no configured key for algorithm {0:?} (key id {1:?})")]
    NoKey(Algorithm, Option<String>),
    #[error("refused: {0}")]
    Refused(jsonwebtoken::errors::Error),
    #[error("`sub` is not a buyer id (1 to 128 characters, no control character)")]
    BadSubject,
}

/// Why the key settings cannot be used: stops the API at start, naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("BUYER_JWT_SECRET must be at least 32 bytes")]
    ShortSecret,
    #[error("BUYER_JWT_PUBLIC_KEYS {path}: {reason}")]
    PublicKeys { path: PathBuf, reason: String },
    #[error(
        "BUYER_AUTH=jwt needs BUYER_JWT_SECRET (an HS256 key) or BUYER_JWT_PUBLIC_KEYS (a JWKS or PEM file)"
    )]
    NoKeys,
}

/// The settings of buyer tokens.
pub struct JwtSettings<'a> {
    pub secret: Option<&'a SecretString>,
    pub public_keys: Option<&'a Path>,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
}

/// One public key and the one algorithm it verifies.
struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The public key file and what was last read from it.
struct PublicKeys {
    path: PathBuf,
    keys: RwLock<Arc<Vec<PublicKey>>>,
    /// The file's modification time and length when it was last read.
    stamp: RwLock<Option<(SystemTime, u64)>>,
}

pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    public: Option<PublicKeys>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtVerifier {
    /// Reads the keys; an unusable setting is an error naming it.
    pub fn new(settings: &JwtSettings<'_>) -> Result<Arc<Self>, KeyError> {
        let hs256 = match settings.secret {
            None => None,
            Some(secret) => {
                let bytes = secret.expose_secret().as_bytes();
                if bytes.len() < 32 {
                    return Err(KeyError::ShortSecret);
                }
                Some(DecodingKey::from_secret(bytes).map_err(|_| KeyError::ShortSecret)?)
            }
        };
        let public = match settings.public_keys {
            None => None,
            Some(path) => {
                let keys = PublicKeys {
                    path: path.to_owned(),
                    keys: RwLock::new(Arc::new(Vec::new())),
                    stamp: RwLock::new(None),
                };
                keys.reload().map_err(|reason| KeyError::PublicKeys {
                    path: path.to_owned(),
                    reason,
                })?;
                Some(keys)
            }
        };
        if hs256.is_none() && public.is_none() {
            return Err(KeyError::NoKeys);
        }
        Ok(Arc::new(Self {
            hs256,
            public,
            issuer: settings.issuer.map(str::to_owned),
            audience: settings.audience.map(str::to_owned),
        }))
    }

    /// Looks at the public key file every few seconds for as long as the verifier lives.
    pub fn watch(self: &Arc<Self>) {
        if self.public.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(verifier) = weak.upgrade() else {
                    return;
                };
                let Some(public) = &verifier.public else {
                    return;
                };
                match public.reload() {
                    Ok(false) => {}
                    Ok(true) => {
                        metrics::counter!("buyer_token_key_reloads_total", "outcome" => "ok")
                            .increment(1);
                    }
                    Err(reason) => {
                        metrics::counter!("buyer_token_key_reloads_total", "outcome" => "failed")
                            .increment(1);
                        tracing::warn!(
                            path = %public.path.display(),
                            reason,
                            "BUYER_JWT_PUBLIC_KEYS could not be read again; the keys in use are kept"
                        );
                    }
                }
            }
        });
    }

    /// The buyer a token names, if it is valid now.
    pub fn verify(&self, token: &str) -> Result<BuyerId, TokenError> {
        let header = decode_header(token).map_err(TokenError::Malformed)?;
        let sub = match header.alg {
            Algorithm::HS256 => {
                let key = self
                    .hs256
                    .as_ref()
                    .ok_or(TokenError::NoKey(header.alg, header.kid.clone()))?;
                self.decode(token, key, header.alg)?
            }
            alg => {
                let keys = self
                    .public
                    .as_ref()
                    .map(|p| p.current())
                    .unwrap_or_default();
                let mut candidates = keys
                    .iter()
                    .filter(|k| k.alg == alg && (header.kid.is_none() || k.kid == header.kid));
                let first = candidates
                    .next()
                    .ok_or_else(|| TokenError::NoKey(alg, header.kid.clone()))?;
                // Without a key id every key of the algorithm is tried: one must verify.
                let mut result = self.decode(token, &first.key, alg);
                for key in candidates {
                    if result.is_ok() {
                        break;
                    }
                    result = self.decode(token, &key.key, alg);
                }
                result?
            }
        };
        BuyerId::parse(&sub).ok_or(TokenError::BadSubject)
    }

    fn decode(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<String, TokenError> {
        #[derive(serde::Deserialize)]
        struct Claims {
            sub: String,
        }
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            // Without a configured audience, a token's `aud` is not ours to judge.
            None => validation.validate_aud = false,
        }
        decode::<Claims>(token, key, &validation)
            .map(|data| data.claims.sub)
            .map_err(TokenError::Refused)
    }
}

impl PublicKeys {
    fn current(&self) -> Arc<Vec<PublicKey>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the file again if it changed since it was last read: whether it did. A file that
    /// cannot be used is not looked at again until it changes.
    fn reload(&self) -> Result<bool, String> {
        let meta = std::fs::metadata(&self.path).map_err(|e| e.to_string())?;
        let stamp = (meta.modified().map_err(|e| e.to_string())?, meta.len());
        if *self.stamp.read().unwrap_or_else(|p| p.into_inner()) == Some(stamp) {
            return Ok(false);
        }
        *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = Some(stamp);
        let text = std::fs::read_to_string(&self.path).map_err(|e| e.to_string())?;
        let keys = parse_keys(&text)?;
        let count = keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        tracing::info!(path = %self.path.display(), keys = count, "buyer token keys read");
        Ok(true)
    }
}

/// The public keys of a JWKS (JSON) or of a file of PEM blocks. Symmetric keys and algorithms
/// other than RS256, ES256 and EdDSA are refused: this file is for public keys.
fn parse_keys(text: &str) -> Result<Vec<PublicKey>, String> {
    let keys = if text.trim_start().starts_with('{') {
        jwks_keys(text)?
    } else {
        pem_keys(text)?
    };
    if keys.is_empty() {
        return Err("no RS256, ES256 or EdDSA public key in it".into());
    }
    Ok(keys)
}

fn jwks_keys(text: &str) -> Result<Vec<PublicKey>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            (AlgorithmParameters::OctetKeyPair(_), None | Some(KeyAlgorithm::EdDSA)) => {
                Algorithm::EdDSA
            }
            (AlgorithmParameters::OctetKey(_), _) => {
                return Err(format!(
                    "key {kid:?} is a shared secret (kty oct); put an HS256 key in BUYER_JWT_SECRET"
                ));
            }
            (_, alg) => {
                return Err(format!(
                    "key {kid:?}: only RS256, ES256 (P-256) and EdDSA are accepted, not {alg:?}"
                ));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
        keys.push(PublicKey { kid, alg, key });
    }
    Ok(keys)
}

/// Each `-----BEGIN PUBLIC KEY-----` block (or `RSA PUBLIC KEY`), as whichever of RSA, P-256 or
/// Ed25519 it is.
fn pem_keys(text: &str) -> Result<Vec<PublicKey>, String> {
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let end_tag = block
            .find("-----END ")
            .ok_or("a PEM block has no END line")?;
        let end = block[end_tag + 9..]
            .find("-----")
            .map(|i| end_tag + 9 + i + 5)
            .ok_or("a PEM block's END line is cut")?;
        let pem = &block[..end];
        rest = &block[end..];
        if pem.contains("PRIVATE KEY") {
            return Err("it holds a private key: give the API only public keys".into());
        }
        let bytes = pem.as_bytes();
        let (alg, key) = if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
            (Algorithm::RS256, key)
        } else if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
            (Algorithm::ES256, key)
        } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
            (Algorithm::EdDSA, key)
        } else {
            return Err(format!(
                "PEM block {} is not an RSA, EC or Ed25519 public key",
                keys.len() + 1
            ));
        };
        keys.push(PublicKey {
            kid: None,
            alg,
            key,
        });
    }
    Ok(keys)
}

/// The algorithms in use, for the first log line.
pub fn describe(verifier: &JwtVerifier) -> String {
    let mut algs: HashSet<String> = HashSet::new();
    if verifier.hs256.is_some() {
        algs.insert("HS256".into());
    }
    if let Some(public) = &verifier.public {
        for k in public.current().iter() {
            algs.insert(format!("{:?}", k.alg));
        }
    }
    let mut algs: Vec<String> = algs.into_iter().collect();
    algs.sort();
    algs.join(",")
}
