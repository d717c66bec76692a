//! Tokens and passwords: issuing and verifying our HS256 tokens, verifying the external
//! identity provider's RS256/ES256 tokens, hashing passwords with argon2id.
//!
//! Algorithms are pinned per key (HS256 for our secret; RS256 or ES256 for each provider key),
//! so `alg: none` and algorithm confusion (an HS256 token "signed" with a public key) are refused
//! before any signature is checked. `exp` is required and checked against the injected clock,
//! not the wall clock, so the simulation controls expiry too.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{ExternalAuth, KeySource};
use crate::limits::{JWKS_BYTES_MAX, JWKS_FETCH_TIMEOUT, JWKS_REFETCH_MIN_MS};

/// The claims of our own tokens. `gen` is the user's token generation when it was issued; a
/// token without it is of generation 0.
#[derive(Debug, Serialize, Deserialize)]
struct OwnClaims {
    sub: String,
    iat: u64,
    exp: u64,
    #[serde(rename = "gen", default)]
    generation: u64,
}

/// The claims we read from the external provider's tokens (Clerk-compatible).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExternalClaims {
    pub sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub family_name: Option<String>,
    #[serde(default)]
    pub picture: Option<String>,
    /// `false` when the provider has not checked that the user owns `email`: such a token is
    /// refused, since the email would name the account (absent means verified, as with
    /// providers that only issue verified emails).
    #[serde(default)]
    email_verified: Option<bool>,
}

/// What a valid token says beyond who it speaks for: when it expires, and what it must be
/// checked against the user's revocations with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFacts {
    pub expires_ms: u64,
    /// Our tokens: their `gen` claim; provider tokens: none.
    pub generation: Option<u64>,
    /// When it was issued (ms), if it says (`iat`).
    pub issued_ms: Option<u64>,
}

impl TokenFacts {
    /// Whether a user whose tokens are at `generation`, last revoked at `revoked_ms`, still
    /// accepts this token: ours must be of the current generation; a provider's must be issued
    /// after the revocation (one without `iat` only while nothing was ever revoked).
    pub fn survives(&self, generation: u64, revoked_ms: u64) -> bool {
        match self.generation {
            Some(token_generation) => token_generation == generation,
            None => generation == 0 || self.issued_ms.is_some_and(|iat| iat > revoked_ms),
        }
    }
}

/// Who a valid token speaks for.
#[derive(Debug, Clone)]
pub enum Identity {
    /// Our token: the user id.
    Local(String),
    /// The external provider's token: its claims (`sub` is the external id).
    External(ExternalClaims),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("PALAVER_AUTH_PUBLIC_KEY: cannot read {0}: {1}")]
    ReadKey(String, std::io::Error),
    #[error(
        "PALAVER_AUTH_PUBLIC_KEY: {0} holds neither an RSA nor an EC (P-256) public key in PEM"
    )]
    BadPem(String),
    #[error("PALAVER_AUTH_JWKS: {0}")]
    Jwks(String),
}

/// One verification key with the single algorithm it may verify.
#[derive(Clone)]
struct ProviderKey {
    key: DecodingKey,
    algorithm: Algorithm,
    kid: Option<String>,
}

/// The external provider: its keys and what its tokens must say.
struct External {
    keys: RwLock<Arc<Vec<ProviderKey>>>,
    static_keys: Vec<ProviderKey>,
    jwks_url: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    /// When the JWKS URL was last fetched (ms, injected clock); refetched at most once a minute
    /// on an unknown `kid`, so a flood of forged kids cannot hammer the provider.
    last_fetch_ms: std::sync::Mutex<Option<u64>>,
}

pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_secs: u64,
    external: Option<External>,
}

fn own_validation() -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    // Expiry is checked against the injected clock in `check_times`.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation
}

/// `exp` must be in the future and `nbf`, when present, not.
fn check_times(exp: u64, nbf: Option<u64>, now_ms: u64) -> bool {
    let now = now_ms / 1000;
    exp > now && nbf.is_none_or(|nbf| nbf <= now)
}

impl Tokens {
    pub fn new(
        secret: &[u8],
        ttl: Duration,
        external: Option<&ExternalAuth>,
    ) -> Result<Self, AuthSetupError> {
        let external = external.map(External::load).transpose()?;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl_secs: ttl.as_secs(),
            external,
        })
    }

    /// Fetches the provider's JWKS from its URL, if one is configured. Called at start; a
    /// failure is reported, and the fetch is retried when a token with an unknown key arrives.
    pub async fn refresh_external_keys(&self, now_ms: u64) -> Result<(), AuthSetupError> {
        match &self.external {
            Some(external) => external.refresh(now_ms).await,
            None => Ok(()),
        }
    }

    /// Whether there is a JWKS URL to reload (see [`Self::reload_external_keys_every`]).
    pub fn reloads_external_keys(&self) -> bool {
        self.external
            .as_ref()
            .is_some_and(|external| external.jwks_url.is_some())
    }

    /// Refetches the provider's JWKS URL every `period`, so that a key the provider withdrew
    /// stops verifying tokens within one period. Returns at once when no URL is configured; a
    /// failed fetch keeps the keys of the last good one.
    pub async fn reload_external_keys_every(&self, period: Duration, now_ms: impl Fn() -> u64) {
        let Some(external) = self.external.as_ref().filter(|e| e.jwks_url.is_some()) else {
            return;
        };
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate, and the keys were just loaded at start.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(error) = external.refresh(now_ms()).await {
                tracing::warn!(%error, "could not reload the external provider's keys; keeping the last ones");
            }
        }
    }

    /// The lifetime of the tokens logins issue.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }

    /// A token of generation 0 (a new user's, and tests').
    pub fn issue(&self, user_id: &str, now_ms: u64) -> String {
        self.issue_at(user_id, 0, now_ms)
    }

    /// A token of the user's current token `generation`.
    pub fn issue_at(&self, user_id: &str, generation: u64, now_ms: u64) -> String {
        self.issue_for(
            user_id,
            generation,
            now_ms,
            Duration::from_secs(self.ttl_secs),
        )
    }

    /// A token living `ttl` instead of the configured lifetime (`palaver token --ttl`).
    pub fn issue_for(&self, user_id: &str, generation: u64, now_ms: u64, ttl: Duration) -> String {
        let iat = now_ms / 1000;
        let claims = OwnClaims {
            sub: user_id.to_owned(),
            iat,
            exp: iat + ttl.as_secs(),
            generation,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with a secret key cannot fail")
    }

    /// The identity a token speaks for, or `None` if it is not valid now.
    pub async fn verify(&self, token: &str, now_ms: u64) -> Option<Identity> {
        self.verify_with_facts(token, now_ms)
            .await
            .map(|(identity, _)| identity)
    }

    /// [`verify`](Self::verify), with the token's expiry, generation and issue time.
    pub async fn verify_with_facts(
        &self,
        token: &str,
        now_ms: u64,
    ) -> Option<(Identity, TokenFacts)> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        match header.alg {
            Algorithm::HS256 => {
                let claims =
                    jsonwebtoken::decode::<OwnClaims>(token, &self.decoding, &own_validation())
                        .ok()?
                        .claims;
                let facts = TokenFacts {
                    expires_ms: claims.exp.saturating_mul(1000),
                    generation: Some(claims.generation),
                    issued_ms: Some(claims.iat.saturating_mul(1000)),
                };
                check_times(claims.exp, None, now_ms)
                    .then_some((Identity::Local(claims.sub), facts))
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let external = self.external.as_ref()?;
                let claims = external
                    .verify(token, header.alg, header.kid.as_deref(), now_ms)
                    .await?;
                let facts = TokenFacts {
                    expires_ms: claims.exp.saturating_mul(1000),
                    generation: None,
                    issued_ms: claims.iat.map(|iat| iat.saturating_mul(1000)),
                };
                Some((Identity::External(claims), facts))
            }
            _ => None,
        }
    }
}

impl External {
    fn load(settings: &ExternalAuth) -> Result<Self, AuthSetupError> {
        let mut static_keys = Vec::new();
        let mut jwks_url = None;
        for source in &settings.keys {
            match source {
                KeySource::PemFile(path) => static_keys.push(pem_key(path)?),
                KeySource::JwksFile(path) => {
                    let text = std::fs::read(path).map_err(|e| {
                        AuthSetupError::Jwks(format!("cannot read {}: {e}", path.display()))
                    })?;
                    static_keys.extend(jwks_keys(&text)?);
                }
                KeySource::JwksUrl(url) => jwks_url = Some(url.clone()),
            }
        }
        Ok(Self {
            keys: RwLock::new(Arc::new(static_keys.clone())),
            static_keys,
            jwks_url,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            last_fetch_ms: std::sync::Mutex::new(None),
        })
    }

    fn current_keys(&self) -> Arc<Vec<ProviderKey>> {
        Arc::clone(&self.keys.read().expect("keys lock never poisoned"))
    }

    async fn refresh(&self, now_ms: u64) -> Result<(), AuthSetupError> {
        let Some(url) = &self.jwks_url else {
            return Ok(());
        };
        *self.last_fetch_ms.lock().expect("never poisoned") = Some(now_ms);
        let fetched = fetch_jwks(url).await?;
        let mut keys = self.static_keys.clone();
        keys.extend(fetched);
        tracing::info!(url, keys = keys.len(), "loaded external provider keys");
        *self.keys.write().expect("keys lock never poisoned") = Arc::new(keys);
        Ok(())
    }

    fn may_refetch(&self, now_ms: u64) -> bool {
        self.jwks_url.is_some()
            && self
                .last_fetch_ms
                .lock()
                .expect("never poisoned")
                .is_none_or(|last| now_ms.saturating_sub(last) >= JWKS_REFETCH_MIN_MS)
    }

    async fn verify(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
        now_ms: u64,
    ) -> Option<ExternalClaims> {
        if let Some(claims) = self.verify_with(&self.current_keys(), token, alg, kid, now_ms) {
            return Some(claims);
        }
        let unknown_kid = kid.is_some_and(|kid| {
            !self
                .current_keys()
                .iter()
                .any(|k| k.kid.as_deref() == Some(kid))
        });
        if unknown_kid && self.may_refetch(now_ms) {
            if let Err(error) = self.refresh(now_ms).await {
                tracing::warn!(%error, "could not refresh the external provider's keys");
            }
            return self.verify_with(&self.current_keys(), token, alg, kid, now_ms);
        }
        None
    }

    fn verify_with(
        &self,
        keys: &[ProviderKey],
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
        now_ms: u64,
    ) -> Option<ExternalClaims> {
        let mut validation = Validation::new(alg);
        // jsonwebtoken checks `iss` and `aud` only when the token carries them, so a configured
        // issuer or audience must also be a required claim.
        let mut required = vec!["exp", "sub"];
        validation.validate_exp = false;
        validation.validate_nbf = false;
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        keys.iter()
            .filter(|k| k.algorithm == alg)
            .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .find_map(|k| jsonwebtoken::decode::<ExternalClaims>(token, &k.key, &validation).ok())
            .map(|data| data.claims)
            .filter(|claims| {
                check_times(claims.exp, claims.nbf, now_ms)
                    && !claims.sub.is_empty()
                    && claims.email_verified != Some(false)
            })
    }
}

fn pem_key(path: &Path) -> Result<ProviderKey, AuthSetupError> {
    let pem =
        std::fs::read(path).map_err(|e| AuthSetupError::ReadKey(path.display().to_string(), e))?;
    // Parse eagerly so a wrong file fails the start, not the first login.
    let (key, algorithm) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        (key, Algorithm::RS256)
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        (key, Algorithm::ES256)
    } else {
        return Err(AuthSetupError::BadPem(path.display().to_string()));
    };
    Ok(ProviderKey {
        key,
        algorithm,
        kid: None,
    })
}

/// The RS256 and ES256 (P-256) keys of a JWKS document; other keys are skipped.
fn jwks_keys(json: &[u8]) -> Result<Vec<ProviderKey>, AuthSetupError> {
    let set: JwkSet = serde_json::from_slice(json)
        .map_err(|e| AuthSetupError::Jwks(format!("not a JWKS document: {e}")))?;
    let keys: Vec<ProviderKey> = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(KeyAlgorithm::RS256), _) => Algorithm::RS256,
                (Some(KeyAlgorithm::ES256), _) => Algorithm::ES256,
                (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (None, AlgorithmParameters::EllipticCurve(ec))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => return None,
            };
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some(ProviderKey {
                key,
                algorithm,
                kid: jwk.common.key_id.clone(),
            })
        })
        .collect();
    if keys.is_empty() {
        return Err(AuthSetupError::Jwks(
            "no RS256 or ES256 key in the JWKS".into(),
        ));
    }
    Ok(keys)
}

async fn fetch_jwks(url: &str) -> Result<Vec<ProviderKey>, AuthSetupError> {
    let fail = |what: String| AuthSetupError::Jwks(format!("{url}: {what}"));
    let client = reqwest::Client::builder()
        .timeout(JWKS_FETCH_TIMEOUT)
        .https_only(!crate::config::is_loopback_http(url))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("answered {}", response.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
        if body.len() + chunk.len() > JWKS_BYTES_MAX {
            return Err(fail("document larger than 1 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    jwks_keys(&body)
}

/// argon2id with the crate's default (OWASP-recommended) parameters. Under cargo-fuzz
/// (`cfg(fuzzing)`, set only by its builds) the cheapest parameters instead, so that the fuzz
/// targets that register and log in run thousands of cases a second rather than tens; the
/// parameters travel in the PHC string, so verification follows whichever produced the hash.
fn hasher() -> Argon2<'static> {
    #[cfg(fuzzing)]
    {
        let params = argon2::Params::new(8, 1, 1, None).expect("valid argon2 parameters");
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
    }
    #[cfg(not(fuzzing))]
    Argon2::default()
}

/// argon2id with a caller-supplied salt (see [`hasher`] for the parameters).
pub fn hash_password(password: &str, salt: &[u8; 16]) -> String {
    hasher()
        .hash_password_with_salt(password.as_bytes(), salt)
        .expect("argon2 accepts a 16-byte salt and a bounded password")
        .to_string()
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_800_000_000_000;

    fn tokens() -> Tokens {
        Tokens::new(
            b"test-secret-test-secret-test-sec",
            Duration::from_secs(3600),
            None,
        )
        .unwrap()
    }

    fn verify_now(tokens: &Tokens, token: &str, now_ms: u64) -> Option<Identity> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(tokens.verify(token, now_ms))
    }

    #[test]
    fn own_tokens_round_trip_and_expire() {
        let tokens = tokens();
        let token = tokens.issue("u1", NOW_MS);
        assert!(
            matches!(verify_now(&tokens, &token, NOW_MS), Some(Identity::Local(id)) if id == "u1")
        );
        assert!(verify_now(&tokens, &token, NOW_MS + 3_600_000).is_none());
    }

    #[test]
    fn refuses_other_secrets_none_and_garbage() {
        let token = tokens().issue("u1", NOW_MS);
        let other = Tokens::new(b"another-secret", Duration::from_secs(3600), None).unwrap();
        assert!(verify_now(&other, &token, NOW_MS).is_none());
        // alg "none": header {"alg":"none","typ":"JWT"}, same claims, empty signature.
        let claims = token.split('.').nth(1).unwrap();
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
        assert!(verify_now(&tokens(), &unsigned, NOW_MS).is_none());
        for garbage in ["", "a.b.c", "....", "not a token"] {
            assert!(verify_now(&tokens(), garbage, NOW_MS).is_none());
        }
    }

    #[test]
    fn tokens_without_exp_are_refused() {
        #[derive(Serialize)]
        struct NoExp {
            sub: String,
        }
        let key = EncodingKey::from_secret(b"test-secret-test-secret-test-sec");
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExp { sub: "u1".into() },
            &key,
        )
        .unwrap();
        assert!(verify_now(&tokens(), &token, NOW_MS).is_none());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let phc = hash_password("correct horse", &[3; 16]);
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
        assert!(!verify_password("correct horse", "not a hash"));
    }
}
