//! Join tokens: everything a new site needs to enroll, in one string to paste.
//!
//! A token is `ctj1.` followed by base64url (no padding) of a small JSON object:
//! the token's id and secret, the control plane's QUIC addresses, and the SHA-256 of
//! its CA certificate. The fingerprint lets the agent trust the right server on first
//! contact with no other configuration; the secret (stored only as a hash on the
//! control plane) proves an operator issued the token. Expiry and use counts live on
//! the control plane, never in the token, so they cannot be edited.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::error::TokenError;

/// The prefix of every join token.
pub const PREFIX: &str = "ctj1.";
/// Longest token accepted; real ones are a few hundred bytes.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Length of a token secret in bytes.
pub const SECRET_LEN: usize = 32;
/// Most addresses a token may carry.
pub const MAX_ADDRESSES: usize = 16;

/// The decoded content of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Public identifier, under which the control plane keeps the token's record.
    #[serde(rename = "i")]
    pub id: String,
    /// Secret bytes; the control plane stores only their SHA-256.
    #[serde(rename = "s", with = "b64")]
    pub secret: Vec<u8>,
    /// SHA-256 of the control plane's CA certificate (DER).
    #[serde(rename = "c", with = "b64")]
    pub ca_sha256: Vec<u8>,
    /// `host:port` QUIC addresses of the control plane, tried in order.
    #[serde(rename = "a")]
    pub addresses: Vec<String>,
}

impl JoinToken {
    /// The token as the string an operator pastes.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Parses and checks a pasted token; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong(text.len()));
        }
        let body = text.strip_prefix(PREFIX).ok_or(TokenError::NotAToken)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Encoding)?;
        let token: JoinToken =
            serde_json::from_slice(&json).map_err(|e| TokenError::Content(e.to_string()))?;
        token.check()?;
        Ok(token)
    }

    fn check(&self) -> Result<(), TokenError> {
        let bad = |what: &str| Err(TokenError::Content(what.to_owned()));
        if self.id.is_empty() || self.id.len() > 64 {
            return bad("token id has the wrong length");
        }
        if self.secret.len() != SECRET_LEN {
            return bad("token secret has the wrong length");
        }
        if self.ca_sha256.len() != 32 {
            return bad("CA fingerprint is not a SHA-256");
        }
        if self.addresses.is_empty() || self.addresses.len() > MAX_ADDRESSES {
            return bad("it must carry between 1 and 16 control-plane addresses");
        }
        if self
            .addresses
            .iter()
            .any(|a| a.is_empty() || a.len() > 255 || !a.contains(':'))
        {
            return bad("a control-plane address is not of the form host:port");
        }
        Ok(())
    }
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token() -> JoinToken {
        JoinToken {
            id: "t-1234".into(),
            secret: vec![7; SECRET_LEN],
            ca_sha256: vec![9; 32],
            addresses: vec!["cp.example.org:7443".into(), "127.0.0.1:7443".into()],
        }
    }

    #[test]
    fn round_trip() {
        let text = token().encode();
        assert!(text.starts_with(PREFIX));
        assert_eq!(JoinToken::parse(&format!("  {text}\n")).unwrap(), token());
    }

    #[test]
    fn damaged_tokens_say_what_is_wrong() {
        assert_eq!(JoinToken::parse("hello"), Err(TokenError::NotAToken));
        assert_eq!(JoinToken::parse("ctj1.!!!"), Err(TokenError::Encoding));
        let text = token().encode();
        assert!(matches!(
            JoinToken::parse(&text[..text.len() - 6]),
            Err(TokenError::Content(_) | TokenError::Encoding)
        ));
        let mut short = token();
        short.secret.pop();
        assert!(matches!(
            JoinToken::parse(&short.encode()),
            Err(TokenError::Content(_))
        ));
        let mut nowhere = token();
        nowhere.addresses.clear();
        assert!(matches!(
            JoinToken::parse(&nowhere.encode()),
            Err(TokenError::Content(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,600}") {
            let _ = JoinToken::parse(&text);
            let _ = JoinToken::parse(&format!("{PREFIX}{text}"));
        }
    }
}
