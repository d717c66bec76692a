//! `tokens`: token verification (`service::auth::Tokens::verify`) against forged, mis-signed,
//! mis-addressed and expired tokens, for our HS256 tokens and the external provider's RS256 and
//! ES256 keys (PEM files, as `PALAVER_AUTH_PUBLIC_KEY` configures them).
//!
//! The input is a structured token: header (alg, kid, typ), claims (sub, exp, nbf, iat, iss,
//! aud, email, each of several types), a signer (our secret, a wrong secret, the provider's RSA
//! or EC key with various algorithms, another provider's keys, the provider's public key used as
//! an HMAC secret, no signature, garbage) and an optional one-byte tamper; or just a raw string.
//! An independent oracle says what the contract accepts. Whatever `verify` accepts, the oracle
//! must accept with the same identity: nothing is accepted unless signed by the right key with
//! the right algorithm, issuer, audience and a future `exp`. Where every claim is well typed the
//! converse is checked too (no valid token refused).

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use palaver::config::{ExternalAuth, KeySource};
use palaver::service::auth::{Identity, Tokens};
use serde_json::{Map, Value, json};

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-sec";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "palaver";
const NOW_MS: u64 = palaver_fuzz::START_MS;
const NOW: i64 = (NOW_MS / 1000) as i64;

const PROVIDER_RSA: &[u8] = include_bytes!("../keys/provider_rsa.pem");
const PROVIDER_RSA_PUB: &[u8] = include_bytes!("../keys/provider_rsa.pub.pem");
const PROVIDER_EC: &[u8] = include_bytes!("../keys/provider_ec.pem");
const PROVIDER_EC_PUB: &[u8] = include_bytes!("../keys/provider_ec.pub.pem");
const OTHER_RSA: &[u8] = include_bytes!("../keys/other_rsa.pem");
const OTHER_EC: &[u8] = include_bytes!("../keys/other_ec.pem");

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderAlg {
    HS256,
    HS384,
    RS256,
    RS384,
    PS256,
    ES256,
    ES384,
    EdDSA,
    None,
}

impl HeaderAlg {
    fn name(self) -> &'static str {
        match self {
            HeaderAlg::HS256 => "HS256",
            HeaderAlg::HS384 => "HS384",
            HeaderAlg::RS256 => "RS256",
            HeaderAlg::RS384 => "RS384",
            HeaderAlg::PS256 => "PS256",
            HeaderAlg::ES256 => "ES256",
            HeaderAlg::ES384 => "ES384",
            HeaderAlg::EdDSA => "EdDSA",
            HeaderAlg::None => "none",
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Signer {
    OurSecret,
    OurSecretHs384,
    WrongSecret,
    ProviderRs256,
    ProviderRs384,
    ProviderPs256,
    ProviderEs256,
    OtherRs256,
    OtherEs256,
    /// Algorithm confusion: HS256 with the provider's public key as the HMAC secret.
    RsaPublicKeyAsHmac,
    EcPublicKeyAsHmac,
    Unsigned,
}

impl Signer {
    /// The algorithm the signature was made with.
    fn alg(self) -> Option<HeaderAlg> {
        Some(match self {
            Signer::OurSecret
            | Signer::WrongSecret
            | Signer::RsaPublicKeyAsHmac
            | Signer::EcPublicKeyAsHmac => HeaderAlg::HS256,
            Signer::OurSecretHs384 => HeaderAlg::HS384,
            Signer::ProviderRs256 | Signer::OtherRs256 => HeaderAlg::RS256,
            Signer::ProviderRs384 => HeaderAlg::RS384,
            Signer::ProviderPs256 => HeaderAlg::PS256,
            Signer::ProviderEs256 | Signer::OtherEs256 => HeaderAlg::ES256,
            Signer::Unsigned => return None,
        })
    }
}

/// A claim that may be missing, well typed, or of the wrong type.
#[derive(Arbitrary, Debug, Clone)]
enum Text {
    Missing,
    Right,
    Str(String),
    Number(i64),
    List(Vec<String>),
    ListWithRight(Vec<String>),
}

#[derive(Arbitrary, Debug, Clone)]
enum Time {
    Missing,
    /// Seconds relative to now.
    Relative(i32),
    Float(f64),
    Str(String),
}

#[derive(Arbitrary, Debug)]
struct Structured {
    /// When false, the header names the signer's own algorithm.
    header_alg: Option<HeaderAlg>,
    signer: Signer,
    kid: Option<String>,
    typ: Option<String>,
    sub: Text,
    exp: Time,
    nbf: Time,
    iat: Time,
    iss: Text,
    aud: Text,
    email: Text,
    tamper: Option<(u16, u8)>,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Structured(Structured),
    Raw(String),
}

#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Local(String),
    External(String),
}

struct Keys {
    tokens: Tokens,
    ours: EncodingKey,
    ours_hs384: EncodingKey,
    wrong: EncodingKey,
    provider_rsa: EncodingKey,
    provider_ec: EncodingKey,
    other_rsa: EncodingKey,
    other_ec: EncodingKey,
    rsa_pub_as_hmac: EncodingKey,
    ec_pub_as_hmac: EncodingKey,
    runtime: tokio::runtime::Runtime,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("palaver-fuzz-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key dir");
        let rsa = dir.join("provider_rsa.pub.pem");
        let ec = dir.join("provider_ec.pub.pem");
        std::fs::write(&rsa, PROVIDER_RSA_PUB).expect("write key");
        std::fs::write(&ec, PROVIDER_EC_PUB).expect("write key");
        let external = ExternalAuth {
            keys: vec![KeySource::PemFile(rsa), KeySource::PemFile(ec)],
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
        };
        let tokens = Tokens::new(SECRET, Duration::from_secs(3600), Some(&external))
            .expect("provider keys load");
        let _ = std::fs::remove_dir_all(&dir);
        Keys {
            tokens,
            ours: EncodingKey::from_secret(SECRET),
            ours_hs384: EncodingKey::from_secret(SECRET),
            wrong: EncodingKey::from_secret(b"another-secret-another-secret-an"),
            provider_rsa: EncodingKey::from_rsa_pem(PROVIDER_RSA).expect("rsa key"),
            provider_ec: EncodingKey::from_ec_pem(PROVIDER_EC).expect("ec key"),
            other_rsa: EncodingKey::from_rsa_pem(OTHER_RSA).expect("rsa key"),
            other_ec: EncodingKey::from_ec_pem(OTHER_EC).expect("ec key"),
            rsa_pub_as_hmac: EncodingKey::from_secret(PROVIDER_RSA_PUB),
            ec_pub_as_hmac: EncodingKey::from_secret(PROVIDER_EC_PUB),
            runtime: palaver_fuzz::runtime(),
        }
    })
}

fn text_value(text: &Text, right: &str) -> Option<Value> {
    match text {
        Text::Missing => None,
        Text::Right => Some(json!(right)),
        Text::Str(s) => Some(json!(s)),
        Text::Number(n) => Some(json!(n)),
        Text::List(items) => Some(json!(items)),
        Text::ListWithRight(items) => {
            let mut items = items.clone();
            items.insert(items.len() / 2, right.to_owned());
            Some(json!(items))
        }
    }
}

fn time_value(time: &Time) -> Option<Value> {
    match time {
        Time::Missing => None,
        Time::Relative(secs) => Some(json!(NOW + i64::from(*secs))),
        Time::Float(f) => Some(json!(f)),
        Time::Str(s) => Some(json!(s)),
    }
}

/// A claim as the string it is, if it is one.
fn as_str(value: &Option<Value>) -> Option<&str> {
    value.as_ref().and_then(Value::as_str)
}

/// A time claim as whole non-negative seconds, if it is one.
fn as_secs(value: &Option<Value>) -> Option<u64> {
    value.as_ref().and_then(Value::as_u64)
}

/// `iss` and `aud`: the one expected value, or a list of strings that contains it (RFC 7519
/// allows a list for `aud`; jsonwebtoken accepts one for `iss` too, and the provider signed it).
fn names(value: &Option<Value>, expected: &str) -> bool {
    match value {
        Some(Value::String(s)) => s == expected,
        Some(Value::Array(items)) => {
            items.iter().all(Value::is_string) && items.contains(&json!(expected))
        }
        _ => false,
    }
}

fn well_typed_text(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::String(_)) => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_string),
        Some(_) => false,
    }
}

fn well_typed_time(value: &Option<Value>) -> bool {
    value.is_none() || as_secs(value).is_some()
}

/// What the contract accepts, and whether the oracle is sure enough to demand acceptance.
fn oracle(
    input: &Structured,
    header_alg: HeaderAlg,
    claims: &Map<String, Value>,
) -> (Option<Expected>, bool) {
    let get = |key: &str| claims.get(key).cloned();
    let (sub, exp, nbf, iat, iss, aud, email) = (
        get("sub"),
        get("exp"),
        get("nbf"),
        get("iat"),
        get("iss"),
        get("aud"),
        get("email"),
    );
    let future_exp = as_secs(&exp).is_some_and(|e| e as i64 > NOW);
    let signed_by = input.signer;
    let expected = match header_alg {
        HeaderAlg::HS256
            if signed_by == Signer::OurSecret
                && future_exp
                && as_secs(&iat).is_some()
                && as_str(&sub).is_some() =>
        {
            Some(Expected::Local(as_str(&sub).unwrap().to_owned()))
        }
        HeaderAlg::RS256 | HeaderAlg::ES256
            if (header_alg == HeaderAlg::RS256 && signed_by == Signer::ProviderRs256
                || header_alg == HeaderAlg::ES256 && signed_by == Signer::ProviderEs256)
                && future_exp
                && as_str(&sub).is_some_and(|s| !s.is_empty())
                && names(&iss, ISSUER)
                && names(&aud, AUDIENCE)
                // `"nbf": null` means no not-before, as serde reads an absent claim.
                && (matches!(nbf, None | Some(Value::Null))
                    || as_secs(&nbf).is_some_and(|n| n as i64 <= NOW))
                && (email.is_none() || as_str(&email).is_some()) =>
        {
            Some(Expected::External(as_str(&sub).unwrap().to_owned()))
        }
        _ => None,
    };
    let certain = well_typed_text(&sub)
        && well_typed_text(&iss)
        && well_typed_text(&aud)
        && well_typed_text(&email)
        && well_typed_time(&exp)
        && well_typed_time(&nbf)
        && well_typed_time(&iat)
        && input.tamper.is_none();
    (expected, certain)
}

fn sign(keys: &Keys, signer: Signer, message: &str) -> String {
    let (key, alg) = match signer {
        Signer::OurSecret => (&keys.ours, Algorithm::HS256),
        Signer::OurSecretHs384 => (&keys.ours_hs384, Algorithm::HS384),
        Signer::WrongSecret => (&keys.wrong, Algorithm::HS256),
        Signer::ProviderRs256 => (&keys.provider_rsa, Algorithm::RS256),
        Signer::ProviderRs384 => (&keys.provider_rsa, Algorithm::RS384),
        Signer::ProviderPs256 => (&keys.provider_rsa, Algorithm::PS256),
        Signer::ProviderEs256 => (&keys.provider_ec, Algorithm::ES256),
        Signer::OtherRs256 => (&keys.other_rsa, Algorithm::RS256),
        Signer::OtherEs256 => (&keys.other_ec, Algorithm::ES256),
        Signer::RsaPublicKeyAsHmac => (&keys.rsa_pub_as_hmac, Algorithm::HS256),
        Signer::EcPublicKeyAsHmac => (&keys.ec_pub_as_hmac, Algorithm::HS256),
        Signer::Unsigned => return String::new(),
    };
    jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).expect("signing with a matching key")
}

fn verify(keys: &Keys, token: &str) -> Option<Identity> {
    keys.runtime.block_on(keys.tokens.verify(token, NOW_MS))
}

fuzz_target!(|input: Input| {
    let keys = keys();
    let input = match input {
        Input::Raw(token) => {
            // Nobody can forge our HMAC or the provider's signatures from nothing.
            assert!(
                verify(keys, &token).is_none(),
                "accepted a raw string: {token:?}"
            );
            return;
        }
        Input::Structured(input) => input,
    };
    let header_alg = input
        .header_alg
        .or(input.signer.alg())
        .unwrap_or(HeaderAlg::None);
    let mut header = Map::new();
    header.insert("alg".into(), json!(header_alg.name()));
    if let Some(typ) = &input.typ {
        header.insert("typ".into(), json!(typ));
    }
    if let Some(kid) = &input.kid {
        header.insert("kid".into(), json!(kid));
    }
    let mut claims = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            claims.insert(key.into(), value);
        }
    };
    put("sub", text_value(&input.sub, "user-1"));
    put("exp", time_value(&input.exp));
    put("nbf", time_value(&input.nbf));
    put("iat", time_value(&input.iat));
    put("iss", text_value(&input.iss, ISSUER));
    put("aud", text_value(&input.aud, AUDIENCE));
    put("email", text_value(&input.email, "ada@example.com"));
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
        URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string())
    );
    let signature = sign(keys, input.signer, &message);
    let original = format!("{message}.{signature}");
    let mut token = original.clone().into_bytes();
    if let Some((at, byte)) = input.tamper
        && !token.is_empty()
    {
        let at = usize::from(at) % token.len();
        token[at] = byte;
    }
    let Ok(token) = String::from_utf8(token) else {
        return;
    };
    let tampered = token != original;

    let (expected, certain) = oracle(&input, header_alg, &claims);
    let got = verify(keys, &token).map(|identity| match identity {
        Identity::Local(sub) => Expected::Local(sub),
        Identity::External(claims) => Expected::External(claims.sub),
    });
    if let Some(got) = &got {
        assert!(!tampered, "accepted a tampered token {token:?} as {got:?}");
        assert_eq!(
            Some(got),
            expected.as_ref(),
            "accepted {token:?} against the contract"
        );
    } else if certain && !tampered {
        assert!(
            expected.is_none(),
            "refused a valid token {token:?} (expected {expected:?})"
        );
    }
});
