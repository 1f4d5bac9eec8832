//! Writes the TUF attack fixtures in `tests/fixtures/tuf/`: a genuine image and
//! director repository built with the control plane's own code, then tampered with once
//! per attack class, plus what the site must conclude (`expect.json`).
//!
//! The fixtures are committed; run this only to regenerate them:
//! `cargo run -p continuum-tests --bin tuf-fixtures -- tests/fixtures/tuf`.
//! Metadata expires in 2100 unless a fixture is about expiry.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use continuum::tuf::director::{Director, Entry};
use continuum::tuf::image::{ImageRepo, make_root, target_for};
use continuum::tuf::keys::SigningKey;
use continuum::tuf::metadir::{commit_targets, refresh, to_bytes};
use continuum::tuf::{Lifetimes, MetaDir, sign};
use continuum_tests::releases::manifest;
use continuum_tests::tuf_fixture::{SITE, copy_tree};
use serde::Serialize;
use serde_json::json;
use tough::TargetName;
use tough::schema::{Role, Root, Signature, Signed, Snapshot, Targets, Timestamp};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn far() -> Lifetimes {
    Lifetimes {
        root: YEAR * 75,
        targets: YEAR * 75,
        snapshot: YEAR * 75,
        timestamp: YEAR * 75,
        director_targets: YEAR * 75,
    }
}

/// A genuine pair of repositories in a scratch data directory.
struct Base {
    data: tempfile::TempDir,
    image: ImageRepo,
    director: Director,
}

impl Base {
    async fn new() -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let (image, _) = ImageRepo::open(data.path(), far()).await?;
        let (director, _) = Director::open(data.path(), far()).await?;
        let base = Base {
            data,
            image,
            director,
        };
        base.publish("hello", "1.0.0").await?;
        base.assign(SITE, 1, &[("hello", "1.0.0")]).await?;
        Ok(base)
    }

    async fn publish(&self, service: &str, version: &str) -> anyhow::Result<()> {
        let text = manifest(service, version);
        let name = continuum_shared::manifest::target_name(service, version);
        let custom = HashMap::from([("service".to_owned(), json!(service))]);
        self.image
            .publish(&name, text.as_bytes(), custom, None)
            .await?;
        Ok(())
    }

    fn entry(&self, service: &str, version: &str) -> anyhow::Result<Entry> {
        let name = continuum_shared::manifest::target_name(service, version);
        let target = self.image.target(&name)?.context("published")?;
        Ok(Entry {
            name,
            target,
            service: service.into(),
            version: version.into(),
        })
    }

    async fn assign(
        &self,
        site: &str,
        generation: u64,
        releases: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let entries = releases
            .iter()
            .map(|(s, v)| self.entry(s, v))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.director
            .set(site, generation, &entries, &Default::default(), true)
            .await?;
        Ok(())
    }

    fn key(&self, name: &str) -> anyhow::Result<SigningKey> {
        Ok(SigningKey::load(&self.data.path().join(name))?)
    }

    fn image_meta(&self) -> MetaDir {
        self.image.metadata().clone()
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.data.path().join(relative)
    }

    fn image_root(&self) -> anyhow::Result<Root> {
        Ok(self.image.root()?.0.signed)
    }

    /// Writes the fixture: the repositories as served, and the site's starting trust.
    fn write(&self, out: &Path, outcome: &str, reason: &str, about: &str) -> anyhow::Result<()> {
        let repo = out.join("repo");
        let tuf = self.path("tuf");
        copy_tree(&tuf.join("image/metadata"), &repo.join("image/metadata"))?;
        copy_tree(&tuf.join("image/blobs"), &repo.join("image/blobs"))?;
        copy_tree(
            &tuf.join("director/metadata"),
            &repo.join("director/metadata"),
        )?;
        copy_tree(
            &tuf.join("director/sites").join(SITE),
            &repo.join("director/sites").join(SITE),
        )?;
        let client = out.join("client/tuf");
        std::fs::create_dir_all(&client)?;
        std::fs::copy(
            tuf.join("image/metadata/1.root.json"),
            client.join("image-initial-root.json"),
        )?;
        std::fs::copy(
            tuf.join("director/metadata/1.root.json"),
            client.join("director-initial-root.json"),
        )?;
        let expect = json!({ "about": about, "outcome": outcome, "reason": reason });
        std::fs::write(out.join("expect.json"), serde_json::to_vec_pretty(&expect)?)?;
        Ok(())
    }
}

/// Signs with exactly the keys given, ignoring role thresholds (for forgeries).
async fn sign_raw<T: Role + Serialize>(role: T, keys: &[&SigningKey]) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut data, olpc_cjson::CanonicalFormatter::new());
    role.serialize(&mut ser)?;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut signatures = Vec::new();
    for key in keys {
        let signer = tough::key_source::KeySource::as_sign(*key)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let sig = signer
            .sign(&data, &rng)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        signatures.push(Signature {
            keyid: key.key_id().clone(),
            sig: sig.into(),
        });
    }
    Ok(to_bytes(&Signed {
        signed: role,
        signatures,
    })?)
}

fn load<T: serde::de::DeserializeOwned>(dir: &MetaDir, name: &str) -> anyhow::Result<Signed<T>> {
    dir.load(name)?.with_context(|| format!("{name} exists"))
}

fn latest_targets(dir: &MetaDir) -> anyhow::Result<(Signed<Targets>, NonZeroU64)> {
    let version = dir.targets_version()?.context("targets")?;
    Ok((load(dir, &format!("{version}.targets.json"))?, version))
}

fn ts_past() -> jiff::Timestamp {
    "2020-01-01T00:00:00Z"
        .parse()
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "tests/fixtures/tuf".into()),
    );
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    let sha = |b: &[u8]| continuum_shared::tls::hex(&continuum_shared::tls::sha256(b));

    // The genuine article.
    let base = Base::new().await?;
    base.write(
        &out.join("valid"),
        "verified",
        "",
        "a genuine repository pair: the site verifies and takes it on",
    )?;

    // Arbitrary software: the manifest's bytes are replaced.
    let base = Base::new().await?;
    let entry = base.entry("hello", "1.0.0")?;
    let blob = base
        .path("tuf/image/blobs")
        .join(continuum_shared::tls::hex(&entry.target.hashes.sha256));
    let evil = manifest("hello", "1.0.0").replace("64MiB", "99MiB");
    std::fs::write(&blob, &evil)?;
    base.write(
        &out.join("arbitrary-software"),
        "refused",
        "hash mismatch",
        "the target's bytes do not match its signed hash",
    )?;

    // Rollback: the site already trusts newer metadata than the server offers.
    let base = Base::new().await?;
    let old = tempfile::tempdir()?;
    copy_tree(&base.path("tuf"), old.path())?;
    base.publish("hello", "1.1.0").await?;
    base.assign(SITE, 2, &[("hello", "1.1.0")]).await?;
    let fixture = out.join("rollback");
    base.write(
        &fixture,
        "refused",
        "version",
        "the server offers older timestamp and snapshot versions than the site trusts",
    )?;
    let trusted = fixture.join("client/tuf/image");
    std::fs::create_dir_all(&trusted)?;
    let meta = base.image_meta();
    let ts: Signed<Timestamp> = load(&meta, "timestamp.json")?;
    std::fs::copy(
        meta.path().join("timestamp.json"),
        trusted.join("timestamp.json"),
    )?;
    let snapshot_version = ts.signed.meta["snapshot.json"].version;
    std::fs::copy(
        meta.path()
            .join(format!("{snapshot_version}.snapshot.json")),
        trusted.join("snapshot.json"),
    )?;
    std::fs::copy(meta.path().join("1.root.json"), trusted.join("root.json"))?;
    std::fs::remove_dir_all(fixture.join("repo"))?;
    copy_tree(
        &old.path().join("image/metadata"),
        &fixture.join("repo/image/metadata"),
    )?;
    copy_tree(
        &old.path().join("image/blobs"),
        &fixture.join("repo/image/blobs"),
    )?;
    copy_tree(
        &old.path().join("director/metadata"),
        &fixture.join("repo/director/metadata"),
    )?;
    copy_tree(
        &old.path().join("director/sites").join(SITE),
        &fixture.join("repo/director/sites").join(SITE),
    )?;

    // Indefinite freeze: the timestamp has expired and nobody re-signed it.
    let base = Base::new().await?;
    let meta = base.image_meta();
    let mut ts: Signed<Timestamp> = load(&meta, "timestamp.json")?;
    ts.signed.version = ts.signed.version.saturating_add(1);
    ts.signed.expires = ts_past();
    meta.write(
        "timestamp.json",
        &sign_raw(ts.signed, &[&base.key("keys/image-online.key")?]).await?,
    )?;
    base.write(
        &out.join("freeze"),
        "stale",
        "expired",
        "the timestamp expired: a frozen view of the repository",
    )?;

    // Endless data: oversized metadata, and a target longer than signed.
    let base = Base::new().await?;
    let meta = base.image_meta();
    let mut bytes = meta.read("timestamp.json").context("timestamp")?;
    bytes.truncate(bytes.len() - 1);
    bytes.extend(std::iter::repeat_n(b' ', 200 * 1024));
    bytes.push(b'\n');
    meta.write("timestamp.json", &bytes)?;
    base.write(
        &out.join("endless-metadata"),
        "refused",
        "maximum size",
        "a timestamp far larger than any real one",
    )?;
    let base = Base::new().await?;
    let entry = base.entry("hello", "1.0.0")?;
    let blob = base
        .path("tuf/image/blobs")
        .join(continuum_shared::tls::hex(&entry.target.hashes.sha256));
    let mut long = std::fs::read(&blob)?;
    long.extend(std::iter::repeat_n(b'#', 256 << 10));
    std::fs::write(&blob, long)?;
    base.write(
        &out.join("endless-target"),
        "refused",
        "maximum size",
        "a target that goes on past its signed length",
    )?;

    // Mix and match: a validly signed snapshot that is not the one the timestamp names.
    let base = Base::new().await?;
    let meta = base.image_meta();
    let ts: Signed<Timestamp> = load(&meta, "timestamp.json")?;
    let version = ts.signed.meta["snapshot.json"].version;
    let mut snapshot: Signed<Snapshot> = load(&meta, &format!("{version}.snapshot.json"))?;
    snapshot
        .signed
        .meta
        .entry("targets.json".into())
        .and_modify(|m| {
            m.version = NonZeroU64::MIN;
            m.hashes = None;
            m.length = None;
        });
    meta.write(
        &format!("{version}.snapshot.json"),
        &sign_raw(snapshot.signed, &[&base.key("keys/image-online.key")?]).await?,
    )?;
    base.write(
        &out.join("mix-and-match"),
        "refused",
        "hash mismatch",
        "a snapshot from another moment than the timestamp vouches for",
    )?;

    // Key compromise below the threshold: targets need two release keys, the attacker
    // holds one.
    let base = Base::new().await?;
    let (root_key, release, online) = (
        base.key("keys/image-root.key")?,
        base.key("keys/release.key")?,
        base.key("keys/image-online.key")?,
    );
    let second = SigningKey::generate()?;
    let mut root = make_root(
        NonZeroU64::new(2).context("2")?,
        &[&root_key],
        1,
        &[&release, &second],
        &online,
        &far(),
    );
    root.roles
        .entry(tough::schema::RoleType::Targets)
        .and_modify(|r| r.threshold = NonZeroU64::new(2).unwrap_or(NonZeroU64::MIN));
    let meta = base.image_meta();
    meta.write(
        "2.root.json",
        sign(root.clone(), &root, &[&root_key]).await?.buffer(),
    )?;
    let (targets, version) = latest_targets(&meta)?;
    let mut forged = targets.signed.clone();
    forged.version = version.saturating_add(1);
    let evil = manifest("evil", "6.6.6");
    forged.targets.insert(
        TargetName::new("releases/evil/6.6.6.toml")?,
        target_for(evil.as_bytes(), HashMap::new()),
    );
    let forged_bytes = sign_raw(forged, &[&release]).await?;
    commit_targets(
        &meta,
        &root,
        &forged_bytes,
        version.saturating_add(1),
        &online,
        &far(),
    )
    .await?;
    std::fs::write(
        base.path("tuf/image/blobs").join(sha(evil.as_bytes())),
        &evil,
    )?;
    base.write(
        &out.join("below-threshold"),
        "refused",
        "",
        "targets signed by one of the two release keys the root requires",
    )?;

    // Fast-forward recovery: an attacker with the old timestamp key pushed the site to
    // timestamp version 999; the key is rotated, and the site must accept version 3.
    let base = Base::new().await?;
    let meta = base.image_meta();
    let (root_key, release, old_online) = (
        base.key("keys/image-root.key")?,
        base.key("keys/release.key")?,
        base.key("keys/image-online.key")?,
    );
    let mut ts: Signed<Timestamp> = load(&meta, "timestamp.json")?;
    ts.signed.version = NonZeroU64::new(999).context("999")?;
    let fast_forwarded = sign_raw(ts.signed, &[&old_online]).await?;
    let new_online = SigningKey::generate()?;
    let root = make_root(
        NonZeroU64::new(2).context("2")?,
        &[&root_key],
        1,
        &[&release],
        &new_online,
        &far(),
    );
    meta.write(
        "2.root.json",
        sign(root.clone(), &root, &[&root_key]).await?.buffer(),
    )?;
    refresh(&meta, &root, &new_online, &far(), true).await?;
    let fixture = out.join("fast-forward-recovery");
    base.write(
        &fixture,
        "verified",
        "",
        "the site was fast-forwarded with a stolen timestamp key, which was then rotated",
    )?;
    let trusted = fixture.join("client/tuf/image");
    std::fs::create_dir_all(&trusted)?;
    std::fs::write(trusted.join("timestamp.json"), fast_forwarded)?;
    std::fs::copy(meta.path().join("1.root.json"), trusted.join("root.json"))?;

    // Wrong software: the director names a release the image repository does not vouch
    // for with the same hashes.
    let base = Base::new().await?;
    let mut entry = base.entry("hello", "1.0.0")?;
    let other = manifest("hello", "1.0.0").replace("8080", "9090");
    entry.target = target_for(other.as_bytes(), HashMap::new());
    std::fs::write(
        base.path("tuf/image/blobs").join(sha(other.as_bytes())),
        &other,
    )?;
    base.director
        .set(SITE, 2, &[entry], &Default::default(), true)
        .await?;
    base.write(
        &out.join("wrong-software"),
        "refused",
        "does not vouch",
        "the director lists bytes that the release keys never signed",
    )?;

    // Another site's desired state replayed to this one (same director key).
    let base = Base::new().await?;
    base.assign("site-b", 7, &[("hello", "1.0.0")]).await?;
    let theirs = base.path("tuf/director/sites/site-b");
    let ours = base.path("tuf/director/sites").join(SITE);
    std::fs::remove_dir_all(&ours)?;
    copy_tree(&theirs, &ours)?;
    base.write(
        &out.join("replayed-director"),
        "refused",
        "site-b",
        "site-b's director metadata served to site-a",
    )?;

    // Stolen online keys (image snapshot/timestamp and director): the attacker signs new
    // image targets with them, which the root does not accept for targets.
    let base = Base::new().await?;
    let meta = base.image_meta();
    let online = base.key("keys/image-online.key")?;
    let (targets, version) = latest_targets(&meta)?;
    let mut forged = targets.signed.clone();
    forged.version = version.saturating_add(1);
    let evil = manifest("evil", "6.6.6");
    forged.targets.insert(
        TargetName::new("releases/evil/6.6.6.toml")?,
        target_for(evil.as_bytes(), HashMap::new()),
    );
    let forged_bytes = sign_raw(forged, &[&online]).await?;
    commit_targets(
        &meta,
        &base.image_root()?,
        &forged_bytes,
        version.saturating_add(1),
        &online,
        &far(),
    )
    .await?;
    std::fs::write(
        base.path("tuf/image/blobs").join(sha(evil.as_bytes())),
        &evil,
    )?;
    let entry = Entry {
        name: "releases/evil/6.6.6.toml".into(),
        target: target_for(evil.as_bytes(), HashMap::new()),
        service: "evil".into(),
        version: "6.6.6".into(),
    };
    base.director
        .set(SITE, 2, &[entry], &Default::default(), true)
        .await?;
    base.write(
        &out.join("stolen-online-keys"),
        "refused",
        "",
        "online keys sign targets the release keys never signed",
    )?;

    // The same thief can only choose among releases that were signed: allowed.
    let base = Base::new().await?;
    base.publish("hello", "0.9.0").await?;
    base.assign(SITE, 2, &[("hello", "0.9.0")]).await?;
    base.write(
        &out.join("online-keys-choose-signed"),
        "verified",
        "",
        "the director picks an older, properly signed release: allowed by design",
    )?;

    println!("fixtures written to {}", out.display());
    Ok(())
}
