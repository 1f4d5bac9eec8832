//! Protocol versions: the control plane serves agents one version behind.

use std::collections::BTreeMap;
use std::time::Duration;

use continuum_shared::protocol::{AgentMessage, Heartbeat, ServerMessage, StreamKind, v1};
use continuum_tests::peer::{Peer, ca_of, join_as};
use continuum_tests::server::Server;
use continuum_tests::wait;

#[test]
fn an_agent_speaking_the_previous_protocol_version_is_served() {
    let server = Server::start();
    let token = server.token("old-timer", &[]);
    let keys = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ca = ca_of(server.data_dir());
        let (key, issued) = join_as(server.quic, ca.clone(), &token, "old-timer", 1, keys.path())
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
        let mut control = peer.link.open(StreamKind::Control, 1).await.unwrap();
        let labels: BTreeMap<String, String> =
            [("cpus", "4"), ("memory", "1073741824"), ("rack", "12")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
        control
            .send(&v1::Hello {
                agent_version: "0.0.9".into(),
                labels,
            })
            .await
            .unwrap();
        match control
            .recv_within::<ServerMessage>(Duration::from_secs(5))
            .await
            .unwrap()
        {
            ServerMessage::Welcome(welcome) => assert_eq!(welcome.protocol_version, 1),
            other => panic!("expected a welcome, got {other:?}"),
        }
        for seq in 1..=3 {
            control
                .send(&AgentMessage::Heartbeat(Heartbeat {
                    seq,
                    uptime_secs: seq,
                }))
                .await
                .unwrap();
        }
        let site = tokio::task::spawn_blocking(move || {
            wait::until(
                Duration::from_secs(10),
                "the old agent's heartbeats",
                || {
                    server
                        .site("old-timer")
                        .filter(|s| s["heartbeats"].as_u64() >= Some(3))
                },
            )
        })
        .await
        .unwrap();
        assert_eq!(site["protocol_version"], 1);
        assert_eq!(site["agent_version"], "0.0.9");
        assert_eq!(
            site["labels"]["cpus"], 4,
            "numeric facts from a v1 agent become numbers"
        );
        assert_eq!(site["labels"]["memory"], 1073741824i64);
        assert_eq!(site["labels"]["rack"], "12", "other labels stay text");
    });
}
