//! The two TUF repositories the control plane keeps, split as Uptane splits them.
//!
//! - The **image repository** ([`image`]) holds every release manifest (and later agent
//!   binaries and image archives) as targets. Its root and targets (release) keys may be
//!   offline; snapshot and timestamp are signed online here.
//! - The **director repository** ([`director`]) holds each site's desired state: one
//!   targets file per site, naming the releases it should run and binding itself to
//!   that site, all signed online here.
//!
//! A site runs a release only when both agree on its name, length and hashes, so a
//! compromised control plane can choose among signed releases but never make a site run
//! software the release keys did not sign. Layout in the data directory:
//!
//! ```text
//! keys/image-root.key  keys/release.key     embedded default only; offline in production
//! keys/image-online.key                     snapshot and timestamp of the image repository
//! tuf/image/metadata/N.root.json  N.targets.json  N.snapshot.json  timestamp.json
//! tuf/image/blobs/<sha256>                  target contents, content-addressed
//! tuf/director/metadata/N.root.json         shared by every site
//! tuf/director/sites/<site>/N.targets.json  N.snapshot.json  timestamp.json
//! ```

pub mod director;
pub mod image;
pub mod keys;
pub mod metadir;
pub mod rotate;

use std::num::NonZeroU64;
use std::time::Duration;

use serde::Serialize;
use tough::editor::signed::SignedRole;
use tough::schema::{KeyHolder, Role, Root};

pub use metadir::MetaDir;

use keys::SigningKey;

/// The TUF specification version our metadata declares.
pub const SPEC_VERSION: &str = "1.0.0";

/// How long each kind of metadata stays valid when signed here.
#[derive(Debug, Clone)]
pub struct Lifetimes {
    /// Root metadata.
    pub root: Duration,
    /// Image targets (signed by the release key).
    pub targets: Duration,
    /// Snapshots.
    pub snapshot: Duration,
    /// Timestamps: the freshness window; an attacker can freeze a site for at most this.
    pub timestamp: Duration,
    /// Director targets (desired state).
    pub director_targets: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        let day = Duration::from_secs(24 * 3600);
        Lifetimes {
            root: day * 365,
            targets: day * 365,
            snapshot: day * 7,
            timestamp: day,
            director_targets: day * 7,
        }
    }
}

/// A TUF operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TufError {
    /// Signing or building metadata failed.
    #[error("TUF metadata: {0}")]
    Metadata(String),
    /// Metadata from the caller is not acceptable.
    #[error("{0}")]
    Rejected(String),
    /// A key file is missing or unusable.
    #[error(transparent)]
    Key(#[from] crate::error::PkiError),
    /// Reading or writing files failed.
    #[error("{0}")]
    Io(String),
}

fn meta_err(e: impl std::fmt::Display) -> TufError {
    TufError::Metadata(e.to_string())
}

/// Now plus `lifetime`, as TUF wants its expiry times.
pub fn expires_in(lifetime: Duration) -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    now.checked_add(
        jiff::SignedDuration::try_from(lifetime).unwrap_or(jiff::SignedDuration::from_hours(24)),
    )
    .unwrap_or(now)
}

/// Whether metadata expiring at `expires` should be re-signed: less than half of its
/// `lifetime` is left.
pub fn needs_refresh(expires: jiff::Timestamp, lifetime: Duration) -> bool {
    let left = expires.as_second() - jiff::Timestamp::now().as_second();
    left < (lifetime.as_secs() / 2) as i64
}

/// `n + 1`.
pub fn next(version: NonZeroU64) -> NonZeroU64 {
    version.saturating_add(1)
}

/// Signs `role` with those of `keys` that `root` lists for it.
pub async fn sign<T: Role + Serialize>(
    role: T,
    root: &Root,
    keys: &[&SigningKey],
) -> Result<SignedRole<T>, TufError> {
    let sources: Vec<_> = keys.iter().map(|k| k.source()).collect();
    SignedRole::new(
        role,
        &KeyHolder::Root(root.clone()),
        &sources,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .await
    .map_err(meta_err)
}
