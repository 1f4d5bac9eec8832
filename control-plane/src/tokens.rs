//! Join tokens on the control plane's side: creating them, and spending one use at a
//! join. The secret is shown once and only its SHA-256 is stored.

use std::time::Duration;

use continuum_shared::labels::{self, Labels};
use continuum_shared::names::check_name;
use continuum_shared::protocol::{Refusal, RefusalCode};
use continuum_shared::tls::{hex, sha256};
use continuum_shared::token::{JoinToken, SECRET_LEN};
use continuum_shared::unix_now;

use crate::error::StoreError;
use crate::model::TokenRecord;
use crate::plane::{ControlPlane, random_bytes, rfc3339};
use crate::store::{StoreExt, Tree, decode, encode};

/// Label keys the agent fills in itself; a token may not set them.
pub const DETECTED_LABELS: &[&str] = &[
    "arch",
    "os",
    "cpus",
    "memory",
    "hostname",
    "engine",
    "agent_version",
    "agent_target",
];

/// Longest token lifetime.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Most sites one fleet token may enroll.
pub const MAX_USES: u32 = 100_000;

/// What an operator asks for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Site name (one use) or name prefix (fleet token).
    pub name: String,
    /// Labels for every site it enrolls.
    pub labels: Labels,
    /// Lifetime.
    pub ttl: Duration,
    /// How many sites it may enroll.
    pub uses: u32,
}

/// Why a token request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenRequestError {
    /// Something in the request is wrong.
    #[error("{0}")]
    Invalid(String),
    /// Storing it failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a request: a valid name, labels that are valid and not detected facts, a
/// lifetime between one second and a year, and a sane use count.
pub fn check_request(request: &TokenRequest) -> Result<(), String> {
    check_name("site", &request.name).map_err(|e| e.to_string())?;
    labels::check_labels(&request.labels)?;
    if let Some(key) = request
        .labels
        .keys()
        .find(|k| DETECTED_LABELS.contains(&k.as_str()))
    {
        return Err(format!(
            "label {key:?} is detected by the agent and cannot be set in a token"
        ));
    }
    if request.ttl < Duration::from_secs(1) || request.ttl > MAX_TTL {
        return Err("ttl must be between 1s and 365 days".into());
    }
    if request.uses == 0 || request.uses > MAX_USES {
        return Err(format!("uses must be between 1 and {MAX_USES}"));
    }
    Ok(())
}

/// Creates a token and returns its record and the text to hand out.
pub fn create(
    cp: &ControlPlane,
    request: TokenRequest,
    created_by: &str,
) -> Result<(TokenRecord, String), TokenRequestError> {
    check_request(&request).map_err(TokenRequestError::Invalid)?;
    let id = format!("t{}", hex(&random_bytes::<8>()));
    let secret = random_bytes::<SECRET_LEN>();
    let now = unix_now();
    let record = TokenRecord {
        id: id.clone(),
        secret_sha256: hex(&sha256(&secret)),
        name: request.name,
        labels: request.labels,
        created_at: now,
        expires_at: now + request.ttl.as_secs().max(1) as i64,
        uses: request.uses,
        enrolled: Vec::new(),
        created_by: created_by.to_owned(),
    };
    cp.store.put_json(Tree::Tokens, id.as_bytes(), &record)?;
    cp.store.flush()?;
    let token = JoinToken {
        id,
        secret: secret.to_vec(),
        ca_sha256: cp.ca.fingerprint().to_vec(),
        addresses: cp.settings.agent_addresses.clone(),
    };
    Ok((record, token.encode()))
}

fn refuse(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Looks a token up and checks its secret and lifetime, without spending it.
pub fn check(cp: &ControlPlane, id: &str, secret: &[u8]) -> Result<TokenRecord, Refusal> {
    let forged = || {
        refuse(
            RefusalCode::InvalidToken,
            "this join token is not valid for this control plane (unknown, or its secret is wrong); ask the central team for a new one",
        )
    };
    let record: TokenRecord = cp
        .store
        .get_json(Tree::Tokens, id.as_bytes())
        .map_err(internal)?
        .ok_or_else(forged)?;
    if !constant_time_eq(
        record.secret_sha256.as_bytes(),
        hex(&sha256(secret)).as_bytes(),
    ) {
        return Err(forged());
    }
    check_usable(&record, unix_now())?;
    Ok(record)
}

fn check_usable(record: &TokenRecord, now: i64) -> Result<(), Refusal> {
    if now >= record.expires_at {
        return Err(refuse(
            RefusalCode::TokenExpired,
            format!(
                "join token {} expired at {}; create a new one with `continuum token create`",
                record.id,
                rfc3339(record.expires_at)
            ),
        ));
    }
    if record.uses_left() == 0 {
        return Err(refuse(
            RefusalCode::TokenUsed,
            format!(
                "join token {} was already used ({} of {} uses); create a new one with `continuum token create`",
                record.id,
                record.enrolled.len(),
                record.uses
            ),
        ));
    }
    Ok(())
}

/// Spends one use of the token for `site`, atomically: two joins racing for the last
/// use cannot both win.
pub fn spend(cp: &ControlPlane, id: &str, site: &str) -> Result<(), Refusal> {
    let now = unix_now();
    let mut verdict = Ok(());
    cp.store
        .update(Tree::Tokens, id.as_bytes(), &mut |old| {
            let old = old?;
            let mut record: TokenRecord = match decode(Tree::Tokens, id.as_bytes(), old) {
                Ok(r) => r,
                Err(e) => {
                    verdict = Err(internal(e));
                    return Some(old.to_vec());
                }
            };
            verdict = check_usable(&record, now);
            if verdict.is_ok() {
                record.enrolled.push(site.to_owned());
            }
            Some(encode(&record).unwrap_or_else(|_| old.to_vec()))
        })
        .map_err(internal)?
        .ok_or_else(|| refuse(RefusalCode::InvalidToken, "the join token disappeared"))?;
    verdict
}

/// The name a join gets: the one asked for, else the token's name (single use) or the
/// token's name and the host name (fleet token).
pub fn site_name(record: &TokenRecord, asked: Option<&str>, hostname: &str) -> String {
    match asked {
        Some(name) => name.to_owned(),
        None if record.uses == 1 => record.name.clone(),
        None => {
            let mut name = format!(
                "{}-{}",
                record.name,
                continuum_shared::names::name_part_from_hostname(hostname)
            );
            name.truncate(continuum_shared::names::MAX_NAME);
            name
        }
    }
}

/// Every token, for listings.
pub fn list(cp: &ControlPlane) -> Result<Vec<TokenRecord>, StoreError> {
    cp.store.list_json(Tree::Tokens)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn internal(e: StoreError) -> Refusal {
    tracing::error!(error = %e, "state store failed during a join");
    refuse(
        RefusalCode::Internal,
        "the control plane could not read its state; try again later",
    )
}

/// Parses `--label key=value` arguments into labels.
pub fn labels_from_args(args: &[String]) -> Result<Labels, String> {
    args.iter()
        .map(|a| labels::parse_label_arg(a))
        .collect::<Result<Labels, _>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uses: u32) -> TokenRecord {
        TokenRecord {
            id: "t1".into(),
            secret_sha256: String::new(),
            name: "edge".into(),
            labels: Labels::new(),
            created_at: 0,
            expires_at: 100,
            uses,
            enrolled: vec![],
            created_by: "admin".into(),
        }
    }

    #[test]
    fn names_under_single_and_fleet_tokens() {
        assert_eq!(site_name(&record(1), None, "Box-1"), "edge");
        assert_eq!(site_name(&record(5), None, "Box-1"), "edge-box-1");
        assert_eq!(site_name(&record(5), Some("mine"), "Box-1"), "mine");
    }

    #[test]
    fn expiry_and_use_count() {
        let mut r = record(1);
        assert!(check_usable(&r, 50).is_ok());
        assert_eq!(
            check_usable(&r, 100).unwrap_err().code,
            RefusalCode::TokenExpired
        );
        r.enrolled.push("edge".into());
        assert_eq!(
            check_usable(&r, 50).unwrap_err().code,
            RefusalCode::TokenUsed
        );
    }

    #[test]
    fn requests_are_checked() {
        let ok = TokenRequest {
            name: "edge".into(),
            labels: Labels::new(),
            ttl: Duration::from_secs(3600),
            uses: 1,
        };
        assert!(check_request(&ok).is_ok());
        let mut bad = ok.clone();
        bad.labels.insert("arch".into(), "arm".into());
        assert!(check_request(&bad).unwrap_err().contains("detected"));
        let mut bad = ok.clone();
        bad.uses = 0;
        assert!(check_request(&bad).is_err());
        let mut bad = ok;
        bad.name = "Bad Name".into();
        assert!(check_request(&bad).is_err());
    }
}
