//! Every TUF attack class, each from a fixture in `tests/fixtures/tuf/`, against the
//! agent's own verification code. Each refusal must leave the state in force untouched
//! and say why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use continuum_agent::trust::{self, DesiredState, TrustError};
use continuum_tests::tuf_fixture::{FixtureTransport, SITE, copy_tree};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tuf")
}

/// Verifies one fixture as the site would; returns the outcome and the state in force
/// before and after.
fn verify(name: &str) -> (Result<DesiredState, TrustError>, serde_json::Value) {
    let fixture = fixtures().join(name);
    assert!(
        fixture.exists(),
        "fixture {name} is missing: regenerate with the tuf-fixtures command in the README"
    );
    let state = tempfile::tempdir().unwrap();
    copy_tree(&fixture.join("client"), state.path()).unwrap();
    let in_force = DesiredState {
        generation: 0,
        releases: vec![],
        agent: None,
        secrets: Default::default(),
        verified_at: 1,
    };
    in_force.save(state.path()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outcome = runtime.block_on(trust::verify(
        state.path(),
        SITE,
        FixtureTransport::new(&fixture),
    ));
    let after = DesiredState::load(state.path()).unwrap().unwrap();
    assert_eq!(
        after, in_force,
        "{name}: the state in force must be untouched by verification"
    );
    let expect: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("expect.json")).unwrap()).unwrap();
    (outcome, expect)
}

fn check(name: &str) {
    let (outcome, expect) = verify(name);
    let reason = expect["reason"].as_str().unwrap_or_default().to_lowercase();
    match (expect["outcome"].as_str().unwrap(), &outcome) {
        ("verified", Ok(state)) => assert!(state.generation >= 1, "{name}: {state:?}"),
        ("refused", Err(TrustError::Refused(why))) | ("stale", Err(TrustError::Stale(why))) => {
            assert!(
                why.to_lowercase().contains(&reason),
                "{name}: {why:?} does not mention {reason:?}"
            );
            assert!(
                why.len() > 20,
                "{name}: a reason a site admin can act on, got {why:?}"
            );
        }
        (expected, got) => panic!("{name}: expected {expected}, got {got:?}"),
    }
}

#[test]
fn a_genuine_repository_pair_verifies() {
    check("valid");
}

#[test]
fn arbitrary_software_is_refused() {
    check("arbitrary-software");
}

#[test]
fn rollback_to_older_metadata_is_refused() {
    check("rollback");
}

#[test]
fn an_indefinite_freeze_is_detected_and_the_state_goes_stale() {
    check("freeze");
}

#[test]
fn endless_metadata_is_refused() {
    check("endless-metadata");
}

#[test]
fn an_endless_target_is_refused() {
    check("endless-target");
}

#[test]
fn mix_and_match_is_refused() {
    check("mix-and-match");
}

#[test]
fn a_key_compromise_below_threshold_is_refused() {
    check("below-threshold");
}

#[test]
fn the_site_recovers_from_a_fast_forward_attack_after_key_rotation() {
    check("fast-forward-recovery");
}

#[test]
fn wrong_software_from_the_director_is_refused() {
    check("wrong-software");
}

#[test]
fn another_sites_director_metadata_is_refused() {
    check("replayed-director");
}

#[test]
fn stolen_online_keys_cannot_get_unsigned_software_installed() {
    check("stolen-online-keys");
}

#[test]
fn stolen_online_keys_can_only_choose_among_signed_releases() {
    check("online-keys-choose-signed");
}

#[test]
fn every_fixture_has_a_test() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let source = include_str!("tuf_attacks.rs");
    for name in names {
        assert!(
            source.contains(&format!("check(\"{name}\")")),
            "fixture {name} has no test"
        );
    }
}

/// Records the URLs a transport was asked for.
#[derive(Debug, Clone)]
struct Recording {
    inner: FixtureTransport,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl tough::Transport for Recording {
    async fn fetch(&self, url: url::Url) -> Result<tough::TransportStream, tough::TransportError> {
        self.asked.lock().unwrap().push(url.to_string());
        self.inner.fetch(url).await
    }
}

#[test]
fn an_unchanged_image_repository_is_not_fetched_again_and_a_changed_one_is_verified_in_full() {
    let fixture = tempfile::tempdir().unwrap();
    copy_tree(&fixtures().join("valid"), fixture.path()).unwrap();
    let state = tempfile::tempdir().unwrap();
    copy_tree(&fixture.path().join("client"), state.path()).unwrap();
    let transport = Recording {
        inner: FixtureTransport::new(fixture.path()),
        asked: Default::default(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let verify = || runtime.block_on(trust::verify(state.path(), SITE, transport.clone()));
    let image_roles = |asked: &[String]| {
        asked
            .iter()
            .filter(|u| {
                u.contains("//image/metadata/")
                    && (u.ends_with("snapshot.json") || u.ends_with("targets.json"))
            })
            .count()
    };

    verify().unwrap();
    assert!(
        image_roles(&transport.asked.lock().unwrap()) >= 2,
        "the first load fetches everything"
    );
    let timestamps = transport
        .asked
        .lock()
        .unwrap()
        .iter()
        .filter(|u| u.ends_with("image/metadata/timestamp.json"))
        .count();
    assert_eq!(
        timestamps, 1,
        "the timestamp the cache looked at is not fetched again"
    );
    transport.asked.lock().unwrap().clear();
    verify().unwrap();
    let asked = transport.asked.lock().unwrap().clone();
    assert_eq!(image_roles(&asked), 0, "{asked:?}");
    assert!(
        asked
            .iter()
            .any(|u| u.ends_with("image/metadata/timestamp.json")),
        "{asked:?}"
    );

    // The targets the timestamp pins are damaged, and the timestamp is served with other
    // bytes (same signed content): the repository is loaded and checked in full again.
    let metadata = fixture.path().join("repo/image/metadata");
    let mut targets = std::fs::read(metadata.join("2.targets.json")).unwrap();
    let at = targets.len() / 2;
    targets[at] ^= 0x01;
    std::fs::write(metadata.join("2.targets.json"), targets).unwrap();
    let mut timestamp = std::fs::read(metadata.join("timestamp.json")).unwrap();
    timestamp.push(b'\n');
    std::fs::write(metadata.join("timestamp.json"), timestamp).unwrap();
    assert!(matches!(verify(), Err(TrustError::Refused(_))));
}

#[test]
fn trusted_files_left_empty_by_an_interrupted_write_do_not_lock_the_site_out() {
    let fixture = fixtures().join("valid");
    let state = tempfile::tempdir().unwrap();
    copy_tree(&fixture.join("client"), state.path()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let verify = || {
        runtime.block_on(trust::verify(
            state.path(),
            SITE,
            FixtureTransport::new(&fixture),
        ))
    };
    verify().unwrap();
    // A verification cut short between truncating and writing its files (the agent
    // killed, its task dropped) leaves them empty.
    for repo in [trust::Repo::Director, trust::Repo::Image] {
        let store = trust::datastore(state.path(), repo);
        for name in ["root.json", "timestamp.json", "snapshot.json"] {
            std::fs::write(store.join(name), b"").unwrap();
        }
    }
    let again = verify();
    assert!(again.is_ok(), "{again:?}");
}
