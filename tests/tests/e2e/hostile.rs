//! Hostile and broken peers: each gets a clear reason and is disconnected, while the
//! control plane keeps serving everyone else.

use std::net::UdpSocket;
use std::time::Duration;

use continuum_shared::protocol::{
    CloseCode, Hello, PROTOCOL_VERSION, RefusalCode, ServerMessage, StreamKind,
};
use continuum_tests::agent::Agent;
use continuum_tests::peer::{Peer, ca_of};
use continuum_tests::server::Server;
use continuum_tests::wait;

#[test]
fn hostile_peers_are_cut_off_and_nobody_else_notices() {
    let server = Server::start();
    let mut steady = Agent::new(server.root(), "steady");
    steady.join(&server.token("steady", &[]), None).ok();
    steady.start();
    let before = server.wait_online("steady");
    let ca = ca_of(server.data_dir());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Garbage instead of a stream preamble.
        let peer = Peer::anonymous(server.quic, ca.clone()).await;
        match &peer.link {
            continuum_shared::link::Link::Quic(connection) => {
                let (mut send, _recv) = connection.open_bi().await.unwrap();
                send.write_all(b"GET / HTTP/1.1\r\n\r\n garbage garbage")
                    .await
                    .unwrap();
            }
        }
        let closed = peer.closed().await;
        assert_eq!(closed.code, Some(CloseCode::Protocol));
        assert!(
            closed
                .reason
                .contains("not speaking the Continuum protocol"),
            "{closed:?}"
        );

        // A frame far over the limit: refused from its length alone.
        let peer = Peer::anonymous(server.quic, ca.clone()).await;
        let mut stream = peer.link.open(StreamKind::Enroll, 2).await.unwrap();
        stream.send_raw(&(64u32 << 20).to_be_bytes()).await.unwrap();
        let closed = peer.closed().await;
        assert!(closed.reason.contains("exceeds the limit"), "{closed:?}");

        // A well-sized frame that is not a message.
        let peer = Peer::anonymous(server.quic, ca.clone()).await;
        let mut stream = peer.link.open(StreamKind::Enroll, 2).await.unwrap();
        stream
            .send_raw(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let closed = peer.closed().await;
        assert!(closed.reason.contains("malformed"), "{closed:?}");

        // A protocol version from the future: refused, with what is served.
        let peer = Peer::anonymous(server.quic, ca.clone()).await;
        let mut stream = peer.link.open(StreamKind::Control, 99).await.unwrap();
        match stream
            .recv_within::<ServerMessage>(Duration::from_secs(5))
            .await
            .unwrap()
        {
            ServerMessage::Refused(refusal) => {
                assert_eq!(refusal.code, RefusalCode::UnsupportedVersion);
                assert!(
                    refusal
                        .message
                        .contains(&format!("versions 1 to {PROTOCOL_VERSION}"))
                        && refusal.message.contains("99"),
                    "{refusal:?}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        drop(peer);

        // No client certificate: no session.
        let peer = Peer::anonymous(server.quic, ca.clone()).await;
        let mut control = peer.link.open(StreamKind::Control, 2).await.unwrap();
        let hello = Hello {
            agent_version: "x".into(),
            labels: Default::default(),
            started_at: 0,
        };
        control.send(&hello).await.unwrap();
        match control
            .recv_within::<ServerMessage>(Duration::from_secs(5))
            .await
            .unwrap()
        {
            ServerMessage::Refused(refusal) => {
                assert_eq!(refusal.code, RefusalCode::Unauthenticated);
                assert!(
                    refusal.message.contains("join with a token first"),
                    "{refusal:?}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }

        // A peer that opens a connection and says nothing is dropped after a while;
        // meanwhile it costs nothing to others. Plain UDP noise is ignored.
        let _silent = Peer::anonymous(server.quic, ca.clone()).await;
        let noise = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..200u32 {
            let datagram: Vec<u8> = (0..1200)
                .map(|j| (i.wrapping_mul(31).wrapping_add(j) % 251) as u8)
                .collect();
            noise.send_to(&datagram, server.quic).unwrap();
        }
    });

    // The steady site never dropped: same session, heartbeats still counting.
    let after = wait::until(
        Duration::from_secs(10),
        "more heartbeats from the steady site",
        || {
            server
                .site("steady")
                .filter(|s| s["heartbeats"].as_u64() > before["heartbeats"].as_u64().map(|h| h + 2))
        },
    );
    assert_eq!(after["connected_since"], before["connected_since"]);
    assert_eq!(steady.status()["run"]["sessions"], 1);
    // And a newcomer can still join.
    let mut newcomer = Agent::new(server.root(), "newcomer");
    newcomer.join(&server.token("newcomer", &[]), None).ok();
    newcomer.start();
    server.wait_online("newcomer");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
