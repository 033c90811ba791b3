//! JWT bearer tokens Pinpoint signs (EdDSA / Ed25519, `kid` in the header, algorithm
//! pinned per key), their verification, the published JWKS, and signing-key rotation:
//! a key signs for `rotate_after_hours`, then stays published until every token it signed
//! has expired.

use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pinpoint_core::config::JwtConfig;
use pinpoint_policy::identity::{Claims, TokenRefusal};
use pinpoint_store::prelude::*;
use pinpoint_store::{now_ms, SigningKeyRecord, Store, StoreError};

struct LoadedKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_raw: Vec<u8>,
    retire_at_ms: i64,
    expires_at_ms: i64,
}

/// Signs and verifies tokens.
pub struct TokenService {
    keys: ArcSwap<Vec<Arc<LoadedKey>>>,
}

const ALG: &str = "EdDSA";
/// PKCS#8 v1 prefix for an Ed25519 private key (RFC 8410), followed by the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn load(record: &SigningKeyRecord) -> Option<Arc<LoadedKey>> {
    if record.alg != ALG {
        tracing::warn!(kid = %record.kid, alg = %record.alg, "skipping signing key with an unsupported algorithm");
        return None;
    }
    Some(Arc::new(LoadedKey {
        kid: record.kid.clone(),
        encoding: EncodingKey::from_ed_der(&record.private_pkcs8),
        decoding: DecodingKey::from_ed_der(&record.public_raw),
        public_raw: record.public_raw.clone(),
        retire_at_ms: record.retire_at_ms,
        expires_at_ms: record.expires_at_ms,
    }))
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenService {
    /// Loads the published keys and makes sure one is current.
    pub async fn start(store: &Store, config: &JwtConfig) -> Result<Arc<TokenService>, StoreError> {
        let service = Arc::new(TokenService {
            keys: ArcSwap::from_pointee(Vec::new()),
        });
        service.maintain(store, config).await?;
        Ok(service)
    }

    /// Deletes expired keys, creates a key when none is current, and reloads.
    pub async fn maintain(&self, store: &Store, config: &JwtConfig) -> Result<(), StoreError> {
        store.delete_expired_signing_keys().await?;
        let now = now_ms();
        let records = store.signing_keys().await?;
        if !records.iter().any(|r| r.retire_at_ms > now) {
            store.insert_signing_key(&new_key(config, now)).await?;
        }
        self.reload(store).await
    }

    /// Retires the current key now and creates its successor; old tokens stay valid.
    pub async fn rotate(&self, store: &Store, config: &JwtConfig) -> Result<String, StoreError> {
        let now = now_ms();
        for record in store.signing_keys().await? {
            if record.retire_at_ms > now {
                store.retire_signing_key(&record.kid, now).await?;
            }
        }
        let key = new_key(config, now + 1);
        store.insert_signing_key(&key).await?;
        self.reload(store).await?;
        Ok(key.kid)
    }

    /// Reads the published keys again (another process rotated them).
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let keys: Vec<_> = store.signing_keys().await?.iter().filter_map(load).collect();
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    /// Whether `kid` names one of Pinpoint's signing keys: a JWT whose header carries it is
    /// a Pinpoint credential, never to be passed to an upstream.
    pub fn is_our_kid(&self, kid: &str) -> bool {
        self.keys.load().iter().any(|key| key.kid == kid)
    }

    /// Signs a token for `principal_id` in `org_id`, valid for `ttl_seconds`.
    pub fn issue(
        &self,
        config: &JwtConfig,
        principal_id: &str,
        org_id: &str,
        ttl_seconds: u64,
        root_key: Option<&str>,
    ) -> Option<(String, Claims)> {
        let now = now_ms();
        let keys = self.keys.load();
        let key = keys
            .iter()
            .filter(|k| k.retire_at_ms > now)
            .max_by_key(|k| k.retire_at_ms)?;
        let iat = now / 1000;
        let claims = Claims {
            iss: config.issuer.clone(),
            aud: org_id.to_owned(),
            sub: principal_id.to_owned(),
            iat,
            exp: iat + ttl_seconds as i64,
            jti: uuid_like(),
            key: root_key.map(str::to_owned),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        header.typ = Some(String::from("JWT"));
        match jsonwebtoken::encode(&header, &claims, &key.encoding) {
            Ok(token) => Some((token, claims)),
            Err(e) => {
                tracing::error!(error = %e, kid = %key.kid, "could not sign a token");
                None
            }
        }
    }

    /// Verifies signature (with the algorithm pinned to the key named by `kid`), issuer and
    /// expiry. The audience is checked by the caller against the subject's organization.
    pub fn verify(&self, config: &JwtConfig, token: &str) -> Result<Claims, TokenRefusal> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenRefusal::Invalid(format!("malformed token: {e}")))?;
        let kid = header
            .kid
            .ok_or_else(|| TokenRefusal::Invalid("token has no kid".into()))?;
        let keys = self.keys.load();
        let key = keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| TokenRefusal::Invalid(format!("unknown kid {kid}")))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenRefusal::Invalid(format!(
                "kid {kid} is pinned to {ALG}, token says {:?}",
                header.alg
            )));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.validate_aud = false;
        validation.leeway = config.leeway_seconds;
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        // Expiry is checked after the signature, so an expired token's claims can be named.
        validation.validate_exp = false;
        match jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation) {
            Ok(data) if data.claims.exp.saturating_add(config.leeway_seconds as i64) < now_ms() / 1000 => {
                Err(TokenRefusal::Expired(Box::new(data.claims)))
            }
            Ok(data) => Ok(data.claims),
            Err(e) => Err(TokenRefusal::Invalid(format!("verification failed: {e}"))),
        }
    }

    /// The JWKS document (RFC 7517) of every published key.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys
            .load()
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": ALG,
                    "use": "sig",
                    "kid": k.kid,
                    "x": b64url(&k.public_raw),
                    "exp": k.expires_at_ms / 1000,
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

fn new_key(config: &JwtConfig, now: i64) -> SigningKeyRecord {
    let seed: [u8; 32] = rand::random();
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&seed);
    let retire = now + (config.rotate_after_hours as i64) * 3_600_000;
    SigningKeyRecord {
        kid: format!("k{}", &uuid_like()[..12]),
        alg: ALG.to_owned(),
        private_pkcs8: pkcs8,
        public_raw: signing.verifying_key().to_bytes().to_vec(),
        created_at_ms: now,
        retire_at_ms: retire,
        // Tokens signed just before retirement live `ttl` more; keep a margin for leeway.
        expires_at_ms: retire + (config.ttl_seconds as i64 + config.leeway_seconds as i64 + 60) * 1000,
    }
}

fn uuid_like() -> String {
    let bytes: [u8; 16] = rand::random();
    pinpoint_core::hex::lower(&bytes)
}
