//! Telemetry end to end: events delivered exactly once and in order through outages,
//! agent restarts and a killed control plane; a full outbox that drops samples first
//! and says so; `/metrics` checked by promtool and scraped by a real Prometheus; OTLP
//! export decoded by a receiver; hostile batches refused.

use std::time::Duration;

use continuum_tests::agent::Agent;
use continuum_tests::docker::{free_port, http_get_path};
use continuum_tests::server::{Server, ServerOptions};
use continuum_tests::wait;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

/// Agent options for fast telemetry and quick reconnects.
const FAST: [&str; 6] = [
    "--metrics-interval",
    "200ms",
    "--reconnect-base",
    "200ms",
    "--reconnect-max",
    "1s",
];

fn joined(server: &Server, site: &str, options: &[&str]) -> Agent {
    let token = server.token(site, &[]);
    let mut agent = Agent::new(server.root(), site);
    agent.join(&token, None).ok();
    agent.start_with(options);
    server.wait_online(site);
    agent
}

/// Every stored event of `site`, oldest first.
fn events(server: &Server, site: &str) -> Vec<Value> {
    let listed = server.json(&["events", "--site", site, "--limit", "1000"]);
    listed.as_array().cloned().unwrap_or_default()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// Waits until `site` has stored at least `count` events of `kind`.
fn wait_events(server: &Server, site: &str, kind: &str, count: usize) -> Vec<Value> {
    wait::until(LIMIT, &format!("{count} {kind} events of {site}"), || {
        let all = events(server, site);
        (of_kind(&all, kind).len() >= count).then_some(all)
    })
}

/// The site's events carry strictly increasing sequence numbers (no duplicate, no
/// reordering) and none says telemetry was lost or reset.
fn assert_exactly_once_in_order(all: &[Value]) {
    let seqs: Vec<u64> = all
        .iter()
        .filter(|e| e["seq"].as_u64() > Some(0))
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers out of order or repeated: {seqs:?}"
    );
    let ids: Vec<u64> = all.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for bad in ["telemetry-lost", "telemetry-reset"] {
        assert!(of_kind(all, bad).is_empty(), "{bad}: {all:#?}");
    }
}

#[test]
fn events_arrive_once_and_in_order_through_outages_restarts_and_a_killed_control_plane() {
    let mut server = Server::start();
    let mut agent = joined(&server, "edge-1", &FAST);
    wait_events(&server, "edge-1", "agent-started", 1);

    // The link is down; the agent restarts (once gracefully, once killed) and keeps
    // recording events and samples meanwhile.
    server.stop();
    std::thread::sleep(Duration::from_millis(800));
    agent.stop();
    agent.start_with(&FAST);
    std::thread::sleep(Duration::from_millis(1500));
    agent.kill();
    agent.start_with(&FAST);
    std::thread::sleep(Duration::from_millis(1500));

    // The control plane comes back and is killed while the backlog streams in.
    server.restart();
    server.wait_online("edge-1");
    server.kill();
    server.restart();
    let all = wait_events(&server, "edge-1", "agent-started", 3);
    std::thread::sleep(Duration::from_secs(2));
    let all_again = events(&server, "edge-1");
    assert_eq!(
        of_kind(&all_again, "agent-started").len(),
        3,
        "every start recorded exactly once: {all:#?}"
    );
    assert_exactly_once_in_order(&all_again);
    // The killed control plane said nothing; the agent notices by the link's idle
    // timeout, reconnects, and samples flow again with nothing lost.
    let telemetry = wait::until(LIMIT, "samples after the last restart", || {
        let telemetry = server.json(&["site", "telemetry", "edge-1"]);
        (telemetry["samples"].as_u64() > Some(0)).then_some(telemetry)
    });
    assert_eq!(telemetry["lost"], 0, "{telemetry}");
}

#[test]
fn a_full_outbox_drops_samples_first_keeps_events_and_reports_what_it_dropped() {
    let mut server = Server::start();
    let options = [
        "--metrics-interval",
        "100ms",
        "--outbox-size",
        "8KiB",
        "--reconnect-base",
        "200ms",
        "--reconnect-max",
        "1s",
    ];
    let mut agent = joined(&server, "tiny-1", &options);
    wait_events(&server, "tiny-1", "agent-started", 1);
    server.stop();
    // About 60 sample records fit; ten seconds make a hundred, plus two restarts.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(4));
        agent.stop();
        agent.start_with(&options);
    }
    std::thread::sleep(Duration::from_secs(3));
    server.restart();
    let all = wait_events(&server, "tiny-1", "telemetry-dropped", 1);
    let all = if of_kind(&all, "agent-started").len() < 3 {
        wait_events(&server, "tiny-1", "agent-started", 3)
    } else {
        all
    };
    assert_eq!(
        of_kind(&all, "agent-started").len(),
        3,
        "events are kept while samples go"
    );
    for report in of_kind(&all, "telemetry-dropped") {
        let message = report["message"].as_str().unwrap();
        assert!(
            message.contains("sample records, 0 events"),
            "only samples were dropped: {message}"
        );
    }
    assert_exactly_once_in_order(&all);
    let telemetry = server.json(&["site", "telemetry", "tiny-1"]);
    assert!(telemetry["dropped"].as_u64() > Some(0), "{telemetry}");
    assert_eq!(telemetry["lost"], 0);
}

#[test]
fn prometheus_scrapes_the_fleet_and_promtool_accepts_the_exposition() {
    let server = Server::start();
    let _agent = joined(&server, "prom-1", &FAST);
    let port = server.metrics.expect("a metrics listener").port();
    let text = wait::until(LIMIT, "the site's host metrics in /metrics", || {
        http_get_path(port, "/metrics")
            .filter(|t| t.contains("continuum_site_load1{site=\"prom-1\"}"))
    });
    assert!(
        text.contains("continuum_site_up{site=\"prom-1\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("continuum_sites{state=\"online\"} 1"),
        "{text}"
    );

    let promtool = require("promtool");
    let mut check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{text}\n").as_bytes())
        .unwrap();
    let verdict = check.wait_with_output().unwrap();
    assert!(
        verdict.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&verdict.stdout),
        String::from_utf8_lossy(&verdict.stderr)
    );

    let prometheus = Prometheus::start(server.root(), port);
    let answer = wait::until(LIMIT, "Prometheus to have scraped the site", || {
        prometheus
            .query("continuum_site_up{site=\"prom-1\"}")
            .filter(|result| result[0]["value"][1] == "1")
    });
    assert_eq!(answer[0]["metric"]["job"], "continuum");
    let load = prometheus.query("continuum_site_memory_total_bytes{site=\"prom-1\"}");
    assert!(load.is_some(), "host metrics are queryable too");
}

#[test]
fn events_and_metrics_are_exported_over_otlp() {
    let receiver = continuum_tests::otlp::Receiver::start();
    let server = Server::start_with(ServerOptions {
        extra: vec!["--otlp-endpoint".into(), receiver.endpoint()],
        ..ServerOptions::default()
    });
    let _agent = joined(&server, "otel-1", &FAST);
    let found = wait::until(
        LIMIT,
        "the site's metrics and events at the receiver",
        || {
            let seen = receiver.seen();
            let metric = seen
                .metrics
                .get("otel-1")
                .is_some_and(|names| names.contains("continuum_site_load1"));
            let event = seen
                .events
                .get("otel-1")
                .is_some_and(|kinds| kinds.contains("agent-started"));
            (metric && event).then_some(seen)
        },
    );
    assert!(
        found.metrics["otel-1"].contains("continuum_site_network_transmit_bytes_total"),
        "{found:?}"
    );
}

#[test]
fn hostile_batches_are_refused_and_nothing_is_stored_for_anyone() {
    use continuum_shared::framing::encode_frame;
    use continuum_shared::protocol::{PROTOCOL_VERSION, StreamKind};
    use continuum_shared::telemetry::{
        Batch, Event, EventKind, Record, RecordBody, TelemetryReply,
    };
    use continuum_tests::peer::{Peer, ca_of, join_as};

    let server = Server::start();
    let token = server.token("mallory", &[]);
    let _victim = joined(&server, "victim-1", &["--metrics-interval", "1h"]);
    let keys = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let event = |seq: u64, kind: EventKind| Record {
        seq,
        at_ms: 1,
        body: RecordBody::Event(Event {
            kind,
            service: Some("victim-1".into()),
            release: None,
            message: "forged".into(),
        }),
    };
    runtime.block_on(async {
        let ca = ca_of(server.data_dir());
        let (key, issued) = join_as(
            server.quic,
            ca.clone(),
            &token,
            "mallory",
            PROTOCOL_VERSION,
            keys.path(),
        )
        .await
        .unwrap();
        let identity = (vec![issued.cert_der.clone().into()], key.private_key_der());
        let peer = Peer::connect(
            server.quic,
            continuum_shared::tls::ServerTrust::Ca(ca),
            Some(identity),
        )
        .await
        .unwrap();
        let refused = |reply: Result<TelemetryReply, _>| match reply {
            Ok(TelemetryReply::Refused(refusal)) => refusal.message,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let frame = |records: Vec<Record>| {
            let batch = Batch {
                epoch: 1,
                records,
                dropped: vec![],
            };
            encode_frame(&batch, StreamKind::Telemetry.frame_limit()).unwrap()
        };
        let mut garbage = 64u32.to_be_bytes().to_vec();
        garbage.extend([0xff; 64]);
        let hostile = [
            (
                "records out of order",
                frame(vec![
                    event(2, EventKind::Deployed),
                    event(1, EventKind::Deployed),
                ]),
                "does not follow",
            ),
            (
                "an event only the control plane may record",
                frame(vec![event(1, EventKind::TelemetryLost)]),
                "recorded by the control plane",
            ),
            ("garbage where a batch should be", garbage, "unreadable"),
            (
                "a frame larger than allowed, refused before it is read",
                (64u32 << 20).to_be_bytes().to_vec(),
                "unreadable",
            ),
        ];
        for (what, bytes, expected) in hostile {
            let mut stream = peer
                .link
                .open(StreamKind::Telemetry, PROTOCOL_VERSION)
                .await
                .unwrap();
            stream.send_raw(&bytes).await.unwrap();
            let reason = refused(stream.recv_within(Duration::from_secs(5)).await);
            assert!(reason.contains(expected), "{what}: {reason}");
        }
        // A good batch lands under the sender's own name, whatever it claims to be about.
        let mut stream = peer
            .link
            .open(StreamKind::Telemetry, PROTOCOL_VERSION)
            .await
            .unwrap();
        let batch = Batch {
            epoch: 1,
            records: vec![event(1, EventKind::Deployed)],
            dropped: vec![],
        };
        stream.send(&batch).await.unwrap();
        match stream.recv_within(Duration::from_secs(5)).await.unwrap() {
            TelemetryReply::Ack {
                epoch: 1,
                through: 1,
            } => {}
            other => panic!("expected an ack, got {other:?}"),
        }
    });
    let mallory = events(&server, "mallory");
    assert_eq!(
        mallory.len(),
        1,
        "only the good batch was stored: {mallory:#?}"
    );
    assert_eq!(mallory[0]["kind"], "deployed");
    let victim = events(&server, "victim-1");
    assert!(
        victim.iter().all(|e| e["message"] != "forged"),
        "nothing lands under another site: {victim:#?}"
    );
}

/// A program the tests need, which `tests/run` installs.
fn require(program: &str) -> String {
    let path = format!("/usr/bin/{program}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{program} is missing: tests/run installs Debian's prometheus package"
    );
    path
}

/// A real Prometheus scraping the control plane's `/metrics` every second.
struct Prometheus {
    child: std::process::Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &std::path::Path, target: u16) -> Prometheus {
        let binary = require("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: continuum\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = std::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        Prometheus { child, port }
    }

    /// The result vector of an instant query, if it has any series.
    fn query(&self, expression: &str) -> Option<Value> {
        let encoded: String = expression
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = http_get_path(self.port, &format!("/api/v1/query?query={encoded}"))?;
        let answer: Value = serde_json::from_str(&body).ok()?;
        let result = answer["data"]["result"].clone();
        result
            .as_array()
            .is_some_and(|r| !r.is_empty())
            .then_some(result)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_follow_what_a_real_container_writes_and_deploys_are_events() {
    use continuum_tests::docker::{Cleanup, ENGINE, TestImage, unique};

    let server = Server::start();
    let site = unique("talk");
    let image = TestImage::build(server.root(), &unique("talker"), "talk");
    let _cleanup = Cleanup {
        sites: vec![site.clone()],
        images: vec![image.tag.clone()],
        containers: vec![],
    };
    let manifest = format!(
        r#"[service]
name = "talker"
version = "1.0.0"

[container]
image = "{image}"
command = ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done"]

[health]
exec = ["true"]
interval = "1s"
"#,
        image = image.tag
    );
    server.publish_shipped("talker.toml", &manifest, &image.archive);
    let _agent = joined(
        &server,
        &site,
        &[
            "--engine",
            ENGINE,
            "--reconcile-interval",
            "1s",
            "--metrics-interval",
            "1s",
        ],
    );
    server
        .cli(&["site", "assign", &site, "talker", "1.0.0"])
        .ok();
    let deployed = wait::until(LIMIT, "a deployed event for talker", || {
        let listed = server.json(&["events", "--site", &site, "--service", "talker"]);
        listed
            .as_array()
            .and_then(|all| all.iter().find(|e| e["kind"] == "deployed").cloned())
    });
    assert_eq!(deployed["release"], "1.0.0");

    // The tail: what the container already wrote.
    let tail = server.cli(&["logs", &site, "talker", "--tail", "2"]).ok();
    assert_eq!(tail.stdout.lines().count(), 2, "{}", tail.stdout);
    assert!(tail.stdout.starts_with("tick "), "{}", tail.stdout);

    // Following: lines the container writes after the command started.
    let mut follow = server
        .cli_command(&["logs", &site, "talker", "--tail", "0", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let received = wait::lines(&mut follow);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match received.recv_timeout(LIMIT) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen.len(), 3, "three new lines streamed live: {seen:?}");
    let numbers: Vec<u64> = seen
        .iter()
        .map(|l| l.trim_start_matches("tick ").parse().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    // A sample taken before the first health verdict says unhealthy: wait for one
    // taken after it.
    let telemetry = wait::until(LIMIT, "the service's container statistics", || {
        let telemetry = server.json(&["site", "telemetry", &site]);
        let service = &telemetry["services"]["talker"];
        (service["continuum_service_memory_bytes"].as_f64()? > 0.0
            && service["continuum_service_healthy"] == 1.0)
            .then_some(telemetry)
    });
    assert_eq!(
        telemetry["services"]["talker"]["continuum_service_healthy"],
        1.0
    );
}

#[test]
fn events_follow_prints_new_events_as_json_lines_as_they_arrive() {
    let server = Server::start();
    let mut agent = joined(&server, "follow-1", &FAST);
    wait_events(&server, "follow-1", "agent-started", 1);
    let mut follow = server
        .cli_command(&["events", "--site", "follow-1", "-f", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let received = wait::lines(&mut follow);
    let first: Value = serde_json::from_str(&received.recv_timeout(LIMIT).unwrap()).unwrap();
    assert_eq!(first["kind"], "agent-started", "the backlog comes first");
    agent.stop();
    agent.start_with(&FAST);
    let next: Value = serde_json::from_str(&received.recv_timeout(LIMIT).unwrap()).unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(next["kind"], "agent-started");
    assert!(next["id"].as_u64() > first["id"].as_u64());
    assert!(next["seq"].as_u64() > first["seq"].as_u64());
}
