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
