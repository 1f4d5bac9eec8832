//! The agent's download path over real QUIC: a transfer cut off half way (the whole
//! connection dropped) resumes on the next connection from the byte it reached, and the
//! bytes delivered are exactly the file; a missing file is reported as not-found.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use continuum::ca::CertificateAuthority;
use continuum::datadir::ServerIdentity;
use continuum_agent::trust::{FetchLimits, LinkTransport};
use continuum_shared::link::Link;
use continuum_shared::protocol::{CloseCode, FetchRequest, FetchResponse};
use continuum_shared::tls::{ServerTrust, client_tls, quic_client};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;
use tough::{IntoVec, Transport};

const SIZE: usize = 3 << 20;

fn content() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 31 % 251) as u8).collect()
}

/// A QUIC server that serves one file on fetch streams, and cuts the first connection
/// after half of it. Returns its address, the CA to trust, and the offsets it was asked
/// for.
async fn server() -> (
    std::net::SocketAddr,
    rustls::pki_types::CertificateDer<'static>,
    Arc<Mutex<Vec<u64>>>,
) {
    continuum_shared::tls::install_crypto_provider();
    let (ca, _) = CertificateAuthority::create().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = ca
        .issue_server(&["127.0.0.1".into()], &key, time::Duration::hours(1))
        .unwrap();
    let identity = ServerIdentity {
        chain: vec![leaf.der, ca.cert_der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    };
    let config = continuum::agents::quic_server_config(&identity, ca.cert_der()).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let address = endpoint.local_addr().unwrap();
    let offsets = Arc::new(Mutex::new(Vec::new()));
    let seen = offsets.clone();
    tokio::spawn(async move {
        let data = Arc::new(content());
        let mut connections = 0;
        while let Some(incoming) = endpoint.accept().await {
            connections += 1;
            let cut = connections == 1;
            let Ok(connection) = incoming.await else {
                continue;
            };
            let (data, seen) = (data.clone(), seen.clone());
            tokio::spawn(async move {
                let link = Link::Quic(connection);
                while let Ok(incoming) = link.accept().await {
                    let stream = incoming.preamble(Duration::from_secs(5)).await.unwrap();
                    let (mut writer, mut reader) = stream.split();
                    let request: FetchRequest = reader.recv().await.unwrap().unwrap();
                    seen.lock().unwrap().push(request.offset);
                    if !request.path.contains("big") {
                        writer.send(&FetchResponse::NotFound).await.unwrap();
                        writer.finish().await;
                        continue;
                    }
                    writer
                        .send(&FetchResponse::Found {
                            length: data.len() as u64,
                        })
                        .await
                        .unwrap();
                    let from = request.offset as usize;
                    let until = if cut { SIZE / 2 } else { SIZE };
                    for chunk in data[from..until].chunks(64 * 1024) {
                        if writer.send_raw(chunk).await.is_err() {
                            return;
                        }
                    }
                    if cut {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        link.close(CloseCode::ShuttingDown, "cut");
                        return;
                    }
                    writer.finish().await;
                }
            });
        }
    });
    (address, ca.cert_der().clone(), offsets)
}

async fn connect(
    address: std::net::SocketAddr,
    ca: rustls::pki_types::CertificateDer<'static>,
) -> (Link, quinn::Endpoint) {
    let config = quic_client(client_tls(ServerTrust::Ca(ca), None).unwrap()).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = endpoint
        .connect_with(config, address, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    (Link::Quic(connection), endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_off_half_way_resumes_on_the_next_connection() {
    let (address, ca, offsets) = server().await;
    let (slot, links) = watch::channel(None);
    // Keep a connection in the slot, reconnecting when it drops, as the agent does.
    let keeper = tokio::spawn(async move {
        let mut endpoints = Vec::new();
        for _ in 0..3 {
            let (link, endpoint) = connect(address, ca.clone()).await;
            endpoints.push(endpoint);
            slot.send_replace(Some(link.clone()));
            link.closed().await;
            slot.send_replace(None);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let transport = LinkTransport::new(links, FetchLimits::default());
    let url =
        url::Url::parse(&format!("continuum://image/targets/{}.big", "a".repeat(64))).unwrap();
    let stream = transport.fetch(url).await.unwrap();
    let bytes = tokio::time::timeout(Duration::from_secs(30), stream.into_vec())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bytes.len(), SIZE);
    assert!(bytes == content(), "the resumed bytes are exactly the file");
    let asked = offsets.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "one resume: {asked:?}");
    assert_eq!(asked[0], 0);
    assert!(
        asked[1] > 0 && asked[1] as usize <= SIZE / 2,
        "resumed from the byte reached: {asked:?}"
    );

    let missing = url::Url::parse("continuum://image/metadata/9.root.json").unwrap();
    let error = transport.fetch(missing).await.err().expect("not found");
    assert_eq!(error.kind(), tough::TransportErrorKind::FileNotFound);
    keeper.abort();
}
