//! Secrets on their way to a site: each value sealed with age to the one site's own
//! X25519 key, so that only that site can open it, whoever carries the ciphertext.
//!
//! The control plane seals a secret for every entitled site when it signs the site's
//! desired state and puts the sealed copies in the site's director targets under
//! `"continuum": {"secrets": {NAME: {"version": N, "sealed": BASE64}}}`; the agent opens
//! them with `secrets.key` in its state directory and hands the values to containers
//! on a tmpfs, never to a disk.

use std::collections::BTreeMap;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest secret value, in bytes.
pub const MAX_SECRET: usize = 64 * 1024;

/// Most secrets one site's desired state may carry.
pub const MAX_SECRETS_PER_SITE: usize = 256;

/// age's overhead over the plaintext is small; anything far larger is refused unread.
const MAX_SEALED: usize = MAX_SECRET + 1024;

/// One secret sealed to one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The secret's version (it grows with every `continuum secret set`).
    pub version: u64,
    /// The age ciphertext, standard base64.
    pub sealed: String,
}

/// Every secret a site's desired state carries, by name.
pub type SealedSecrets = BTreeMap<String, Sealed>;

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A key or recipient does not parse.
    #[error("{0}")]
    Key(String),
    /// The value is larger than [`MAX_SECRET`].
    #[error("a secret holds at most {MAX_SECRET} bytes; this one has {0}")]
    TooLarge(usize),
    /// Sealing failed.
    #[error("sealing failed: {0}")]
    Seal(String),
    /// The ciphertext is not for this key, or is damaged.
    #[error("cannot open: {0}")]
    Open(String),
}

/// A site's (or the control plane's) secrets key: an age X25519 identity.
pub struct SecretsKey(age::x25519::Identity);

impl SecretsKey {
    /// A new random key.
    pub fn generate() -> Self {
        SecretsKey(age::x25519::Identity::generate())
    }

    /// Reads a key from its text form (`AGE-SECRET-KEY-1…`).
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        age::x25519::Identity::from_str(text.trim())
            .map(SecretsKey)
            .map_err(|e| SecretError::Key(format!("not an age secret key: {e}")))
    }

    /// Reads the key kept at `path`, or makes one and keeps it there (0600); says
    /// whether it was made.
    pub fn load_or_create(path: &std::path::Path) -> Result<(Self, bool), SecretError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text)
                .map(|key| (key, false))
                .map_err(|e| SecretError::Key(format!("{} is damaged: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                crate::files::write_private(path, key.to_text().as_bytes())
                    .map_err(|e| SecretError::Key(e.to_string()))?;
                Ok((key, true))
            }
            Err(e) => Err(SecretError::Key(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// The text form, to be stored in a private (0600) file and nowhere else.
    pub fn to_text(&self) -> String {
        use age::secrecy::ExposeSecret;
        self.0.to_string().expose_secret().to_owned()
    }

    /// The public half (`age1…`), which anyone may hold.
    pub fn recipient(&self) -> String {
        self.0.to_public().to_string()
    }

    /// Opens a value sealed to this key.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SecretError> {
        if sealed.len() > MAX_SEALED * 4 / 3 + 4 {
            return Err(SecretError::Open("the ciphertext is too large".into()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|e| SecretError::Open(format!("not base64: {e}")))?;
        let plain = age::decrypt(&self.0, &bytes).map_err(|e| SecretError::Open(e.to_string()))?;
        if plain.len() > MAX_SECRET {
            return Err(SecretError::TooLarge(plain.len()));
        }
        Ok(plain)
    }
}

/// Checks a recipient as a site announces it.
pub fn check_recipient(recipient: &str) -> Result<(), SecretError> {
    age::x25519::Recipient::from_str(recipient)
        .map(drop)
        .map_err(|e| SecretError::Key(format!("not an age recipient: {e}")))
}

/// Seals `value` so that only the holder of `recipient`'s key can open it.
pub fn seal(recipient: &str, value: &[u8]) -> Result<String, SecretError> {
    if value.len() > MAX_SECRET {
        return Err(SecretError::TooLarge(value.len()));
    }
    let recipient = age::x25519::Recipient::from_str(recipient)
        .map_err(|e| SecretError::Key(format!("not an age recipient: {e}")))?;
    let sealed = age::encrypt(&recipient, value).map_err(|e| SecretError::Seal(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
}

/// A registry login kept as a secret: `USER:PASSWORD` (a trailing newline is ignored).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryLogin {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl RegistryLogin {
    /// Reads a login from a secret's value.
    pub fn parse(value: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(value)
            .map_err(|_| "a registry login is text: USER:PASSWORD".to_owned())?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        match text.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                Ok(RegistryLogin {
                    username: user.to_owned(),
                    password: password.to_owned(),
                })
            }
            _ => Err("a registry login is USER:PASSWORD, both non-empty".into()),
        }
    }
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_the_sites_own_key_opens_what_was_sealed_to_it() {
        let mine = SecretsKey::generate();
        let other = SecretsKey::generate();
        let sealed = seal(&mine.recipient(), b"hunter2").unwrap();
        assert_eq!(mine.open(&sealed).unwrap(), b"hunter2");
        assert!(matches!(other.open(&sealed), Err(SecretError::Open(_))));
        // The key survives its text form.
        let again = SecretsKey::parse(&mine.to_text()).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), b"hunter2");
    }

    #[test]
    fn damaged_or_oversized_input_is_refused_not_panicked_on() {
        let key = SecretsKey::generate();
        assert!(key.open("not base64!").is_err());
        assert!(key.open("aGVsbG8=").is_err());
        assert!(key.open(&"A".repeat(200_000)).is_err());
        assert!(seal(&key.recipient(), &vec![0; MAX_SECRET + 1]).is_err());
        assert!(seal("age1nope", b"x").is_err());
        assert!(check_recipient(&key.recipient()).is_ok());
        assert!(SecretsKey::parse("AGE-SECRET-KEY-1XYZ").is_err());
    }

    #[test]
    fn a_registry_login_is_user_colon_password_and_never_prints_the_password() {
        let login = RegistryLogin::parse(b"robot:s3cr:et\n").unwrap();
        assert_eq!(login.username, "robot");
        assert_eq!(login.password, "s3cr:et");
        assert!(!format!("{login:?}").contains("s3cr"));
        assert!(RegistryLogin::parse(b"nocolon").is_err());
        assert!(RegistryLogin::parse(b":pw").is_err());
        assert!(RegistryLogin::parse(&[0xff, b':', b'x']).is_err());
    }
}
