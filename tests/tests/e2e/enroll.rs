//! Joining: tokens, names, identities, and every way a join can be refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use continuum_shared::protocol::PROTOCOL_VERSION;
use continuum_shared::token::JoinToken;
use continuum_tests::agent::Agent;
use continuum_tests::server::Server;

#[test]
fn a_joined_agent_comes_online_with_its_labels_and_heartbeats() {
    let server = Server::start();
    let token = server.token("site-a", &["--label", "tier=T1", "--label", "region=eu"]);
    let mut agent = Agent::new(server.root(), "a");
    let joined = agent.join(&token, None).ok();
    assert!(joined.stdout.contains("site-a"), "{}", joined.stdout);
    agent.start();

    let site = server.wait_online("site-a");
    assert_eq!(site["status"], "online");
    assert_eq!(site["labels"]["tier"], "T1");
    assert_eq!(site["labels"]["region"], "eu");
    assert!(
        site["labels"]["cpus"].as_i64().unwrap() >= 1,
        "cpus is a number: {site}"
    );
    assert!(
        site["labels"]["memory"].as_i64().unwrap() > 1 << 20,
        "memory is a number of bytes: {site}"
    );
    assert_eq!(site["labels"]["arch"], std::env::consts::ARCH);
    assert_eq!(site["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(site["protocol_version"], PROTOCOL_VERSION);
    assert_eq!(site["transport"], "quic");
    assert!(
        site["remote_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    // Heartbeats arrive (interval 1 s in tests) and last_seen follows them.
    let beating = continuum_tests::wait::until(Duration::from_secs(15), "three heartbeats", || {
        server
            .site("site-a")
            .filter(|s| s["heartbeats"].as_u64().unwrap_or(0) >= 3)
    });
    assert!(beating["last_seen"].as_str().is_some());

    let status = agent.wait_online();
    assert_eq!(status["site"], "site-a");
    assert!(status["running"].as_bool().unwrap());
    assert!(status["run"]["heartbeats"].as_u64().unwrap() >= 1);

    // The text listing shows it too.
    let table = server.cli(&["sites"]).ok().stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("site-a") && l.contains("online")),
        "{table}"
    );
}

fn assert_private(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{:?}", entry.path());
            assert_private(&entry.path());
        } else {
            assert_eq!(mode, 0o600, "{:?}", entry.path());
        }
    }
}

#[test]
fn keys_and_state_are_private_to_their_owner() {
    let server = Server::start();
    let mut agent = Agent::new(server.root(), "p");
    agent.join(&server.token("private", &[]), None).ok();
    agent.start();
    agent.wait_online();
    assert_private(server.data_dir());
    assert_private(&agent.state_dir);
    let user_client = server.root().join("home/.config/continuum/client.toml");
    assert_eq!(
        std::fs::metadata(user_client).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn an_agent_restart_keeps_its_identity() {
    let server = Server::start();
    let mut agent = Agent::new(server.root(), "r");
    agent.join(&server.token("keeper", &[]), None).ok();
    let identity = agent.identity();
    agent.start();
    server.wait_online("keeper");
    agent.kill();
    agent.start();
    agent.wait_online();
    assert_eq!(
        agent.identity(),
        identity,
        "a restart reuses the key and certificate"
    );
    assert_eq!(server.sites().len(), 1);
    assert_eq!(server.wait_online("keeper")["status"], "online");
}

#[test]
fn a_fleet_token_enrolls_several_devices_each_under_its_own_name() {
    let server = Server::start();
    let token = server.token("edge", &["--uses", "3", "--label", "fleet=sensors"]);
    let mut first = Agent::new(server.root(), "d1");
    let out = first.join(&token, None).ok();
    let hostname = continuum_shared::names::name_part_from_hostname(
        &continuum_shared::names::local_hostname(),
    );
    assert!(
        out.stdout.contains(&format!("edge-{hostname}")),
        "{}",
        out.stdout
    );
    let mut second = Agent::new(server.root(), "d2");
    second.join(&token, Some("edge-two")).ok();
    // A third device on the same host would get the same default name: refused clearly.
    let clash = Agent::new(server.root(), "d3").join(&token, None);
    assert_ne!(clash.code, 0);
    assert!(
        clash.stderr.contains("already enrolled") && clash.stderr.contains("--name"),
        "{}",
        clash.stderr
    );
    first.start();
    second.start();
    server.wait_online(&format!("edge-{hostname}"));
    let two = server.wait_online("edge-two");
    assert_eq!(two["labels"]["fleet"], "sensors");
    assert_ne!(
        first.identity()["cert_der"],
        second.identity()["cert_der"],
        "each device has its own identity"
    );
    let tokens = server.json(&["token", "list"]);
    assert_eq!(tokens[0]["enrolled"].as_array().unwrap().len(), 2);
    assert!(
        !serde_json::to_string(&tokens).unwrap().contains(&token),
        "token listings never show the secret"
    );
}

#[test]
fn bad_tokens_are_refused_with_clear_messages_and_leave_nothing_behind() {
    let server = Server::start();
    let refused = |name: &str, token: &str| {
        let agent = Agent::new(server.root(), name);
        let out = agent.join(token, None);
        assert_ne!(out.code, 0, "join with a bad token succeeded");
        assert!(
            !agent.state_dir.exists(),
            "a refused join leaves no state behind"
        );
        out.stderr
    };

    // Reused.
    let once = server.token("once", &[]);
    Agent::new(server.root(), "first").join(&once, None).ok();
    let err = refused("second", &once);
    assert!(err.contains("already used"), "{err}");

    // Expired.
    let short = server.token("short", &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let err = refused("late", &short);
    assert!(err.contains("expired"), "{err}");

    // Forged: right id, wrong secret.
    let mut forged = JoinToken::parse(&server.token("forged", &[])).unwrap();
    forged.secret = vec![0; continuum_shared::token::SECRET_LEN];
    let err = refused("forger", &forged.encode());
    assert!(err.contains("not valid for this control plane"), "{err}");

    // A server that is not ours: the CA fingerprint does not match.
    let mut other_ca = JoinToken::parse(&server.token("elsewhere", &[])).unwrap();
    other_ca.ca_sha256 = vec![7; 32];
    let err = refused("misled", &other_ca.encode());
    assert!(err.contains("does not match the fingerprint"), "{err}");

    // Not a token at all.
    let err = refused("confused", "hello");
    assert!(err.contains("not a Continuum join token"), "{err}");

    // The server kept serving throughout.
    let mut good = Agent::new(server.root(), "good");
    good.join(&server.token("good", &[]), None).ok();
    good.start();
    server.wait_online("good");
}
