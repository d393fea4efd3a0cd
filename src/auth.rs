//! Token authentication: HS256 JWTs carried in HELLO's payload.
//!
//! A token is checked once, at HELLO; what it allows is kept with the
//! connection as an [`Allow`] (a flag for "everything" or a small sorted list
//! of addresses), so checking a frame's destination allocates nothing.

use crate::config::{Auth, AuthKey, AuthMode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

/// The `allow` entry that allows every address (host software).
pub const ALLOW_ALL: &str = "*";

/// Seconds of clock skew tolerated when checking `exp`.
pub const EXP_LEEWAY_S: u64 = 60;

/// The claims of a gateway token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The only address the token may register as; absent: any address (a
    /// web page that picks its own random address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Addresses the holder may send DATA to, STATE_GET and SUBSCRIBE; the
    /// single entry `"*"` allows all.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Expiry, Unix seconds (required).
    pub exp: u64,
}

/// What a verified token allows a connection to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    All,
    /// Sorted, without duplicates.
    Only(Box<[Uuid]>),
}

impl Allow {
    /// Parses a token's `allow` list: `["*"]`, or UUID strings.
    pub fn parse(entries: &[String]) -> Result<Allow, &'static str> {
        if entries.iter().any(|e| e == ALLOW_ALL) {
            return if entries.len() == 1 {
                Ok(Allow::All)
            } else {
                Err("\"*\" must be the only allow entry")
            };
        }
        let mut list = entries
            .iter()
            .map(|e| Uuid::parse_str(e).map_err(|_| "allow entry is not a UUID"))
            .collect::<Result<Vec<_>, _>>()?;
        list.sort_unstable();
        list.dedup();
        Ok(Allow::Only(list.into_boxed_slice()))
    }

    pub fn allows(&self, addr: &Uuid) -> bool {
        match self {
            Allow::All => true,
            Allow::Only(list) => list.binary_search(addr).is_ok(),
        }
    }
}

/// Checks tokens against the configured keys, chosen by the header's `kid`.
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl Verifier {
    /// None when authentication is off.
    pub fn from_config(auth: &Auth) -> Option<Verifier> {
        if auth.mode == AuthMode::Off {
            return None;
        }
        let keys = auth
            .keys
            .iter()
            .map(|k| (k.kid.clone(), DecodingKey::from_secret(k.secret.as_bytes())))
            .collect();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = EXP_LEEWAY_S;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Some(Verifier { keys, validation })
    }

    /// Verifies the HELLO `token` of a connection registering as `addr` and
    /// returns what it allows, or why it is refused.
    pub fn verify(&self, token: &[u8], addr: &Uuid) -> Result<Allow, &'static str> {
        if token.is_empty() {
            return Err("token required");
        }
        let token = std::str::from_utf8(token).map_err(|_| "token is not UTF-8")?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        let kid = header.kid.ok_or("token has no kid")?;
        let key = self.keys.get(&kid).ok_or("unknown kid")?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired",
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad token signature",
                    _ => "invalid token",
                }
            })?;
        let claims = data.claims;
        if let Some(sub) = &claims.sub {
            let sub = Uuid::parse_str(sub).map_err(|_| "sub is not a UUID")?;
            if sub != *addr {
                return Err("token is for another address");
            }
        }
        Allow::parse(&claims.allow)
    }
}

/// What a refused client is told, given why [`Verifier::verify`] refused it:
/// what it can act on (no token, an expired one, a token for another
/// address) as is; anything about keys and signatures only as "invalid
/// token", so a prober learns nothing about which `kid`s exist. The full
/// reason goes to the gateway's log.
pub fn client_message(why: &'static str) -> &'static str {
    match why {
        "token required" | "token expired" | "token is for another address" => why,
        _ => "invalid token",
    }
}

/// Mints a token signed with `key`, valid for `ttl_s` seconds from now.
pub fn mint(
    key: &AuthKey,
    sub: Option<Uuid>,
    allow: Vec<String>,
    ttl_s: u64,
) -> anyhow::Result<String> {
    Allow::parse(&allow).map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = Claims {
        sub: sub.map(|s| s.to_string()),
        allow,
        exp: now + ttl_s,
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    let enc = EncodingKey::from_secret(key.secret.as_bytes());
    Ok(jsonwebtoken::encode(&header, &claims, &enc)?)
}

/// Parses a lifetime such as `30s`, `15m`, `24h` or `7d` into seconds.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid ttl {text:?}: use a number with s, m, h or d (e.g. 24h)");
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match n.checked_mul(per) {
        Some(s) if s > 0 => Ok(s),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str) -> AuthKey {
        AuthKey {
            kid: kid.into(),
            secret: format!("{kid}-0123456789abcdef0123456789abcdef"),
        }
    }

    fn verifier(keys: Vec<AuthKey>) -> Verifier {
        Verifier::from_config(&Auth {
            mode: AuthMode::Jwt,
            keys,
        })
        .unwrap()
    }

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("30s"), Ok(30));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("24h"), Ok(86_400));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        for bad in [
            "",
            "h",
            "10",
            "0s",
            "-1h",
            "1w",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_parsing() {
        assert_eq!(Allow::parse(&["*".into()]), Ok(Allow::All));
        assert!(Allow::parse(&["*".into(), Uuid::nil().to_string()]).is_err());
        assert!(Allow::parse(&["nope".into()]).is_err());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let allow = Allow::parse(&[b.to_string(), a.to_string(), b.to_string()]).unwrap();
        assert!(allow.allows(&a) && allow.allows(&b));
        assert!(!allow.allows(&Uuid::new_v4()));
        assert!(!Allow::parse(&[]).unwrap().allows(&a));
    }

    #[test]
    fn minted_tokens_verify_by_kid() {
        let (k1, k2) = (key("one"), key("two"));
        let v = verifier(vec![k1.clone(), k2.clone()]);
        let me = Uuid::new_v4();
        for k in [&k1, &k2] {
            let t = mint(k, Some(me), vec!["*".into()], 60).unwrap();
            assert_eq!(v.verify(t.as_bytes(), &me), Ok(Allow::All));
            assert!(v.verify(t.as_bytes(), &Uuid::new_v4()).is_err());
        }
        let open = mint(&k1, None, vec![], 60).unwrap();
        assert!(v.verify(open.as_bytes(), &Uuid::new_v4()).is_ok());
        let stranger = mint(&key("three"), Some(me), vec![], 60).unwrap();
        assert_eq!(v.verify(stranger.as_bytes(), &me), Err("unknown kid"));
        let forged = mint(
            &AuthKey {
                kid: "one".into(),
                secret: "another secret of enough length!".into(),
            },
            Some(me),
            vec![],
            60,
        )
        .unwrap();
        assert_eq!(v.verify(forged.as_bytes(), &me), Err("bad token signature"));
        assert_eq!(v.verify(b"", &me), Err("token required"));
        assert_eq!(client_message("unknown kid"), "invalid token");
        assert_eq!(client_message("bad token signature"), "invalid token");
        assert_eq!(client_message("token expired"), "token expired");
        assert_eq!(client_message("token required"), "token required");
        assert!(v.verify(b"garbage", &me).is_err());
    }
}
