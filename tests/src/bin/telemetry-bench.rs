//! Telemetry ingest benchmark: N simulated sites, each with its own key, certificate and
//! QUIC connection to a real `continuum serve`, send telemetry batches as fast as the
//! control plane acknowledges them (each ack means durably stored).
//!
//! It prints the samples per second the control plane stored, batches per second, and
//! the control plane's CPU time and memory meanwhile.
//!
//! `cargo build --release --workspace && target/release/telemetry-bench --sites 1000`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use continuum_shared::protocol::{PROTOCOL_VERSION, StreamKind};
use continuum_shared::telemetry::{Batch, Metric, Record, RecordBody, Sample, TelemetryReply};
use continuum_tests::peer::{Peer, ca_of, join_as};
use continuum_tests::procfs::{cpu_ticks, rss_kib};
use continuum_tests::server::{Server, ServerOptions};
use tokio::sync::Semaphore;

/// Measure how fast the control plane stores telemetry.
#[derive(Debug, Parser)]
struct Args {
    /// Simulated sites.
    #[arg(long, default_value_t = 1000)]
    sites: usize,
    /// Batches each site sends.
    #[arg(long, default_value_t = 20)]
    batches: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 50)]
    records: usize,
    /// Samples per record (a host with a few services takes about 30).
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 64)]
    join_concurrency: usize,
}

/// One record of `samples` host and service samples.
fn record(seq: u64, samples: usize) -> Record {
    let samples = (0..samples)
        .map(|i| {
            let metric = Metric::ALL[i % Metric::ALL.len()];
            Sample {
                metric,
                service: metric.per_service().then(|| format!("svc{}", i % 8)),
                value: (seq * 31 + i as u64) as f64 / 7.0,
            }
        })
        .collect();
    Record {
        seq,
        at_ms: 1_700_000_000_000 + seq as i64,
        body: RecordBody::Samples(samples),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = Server::start_with(ServerOptions {
        heartbeat: "10s".into(),
        extra: vec!["--metrics-listen".into(), "none".into()],
        ..ServerOptions::default()
    });
    let pid = server.pid().unwrap_or(0);
    let quic = server.quic;
    let token = server.token("bench", &["--uses", &args.sites.to_string()]);
    let runtime = tokio::runtime::Runtime::new()?;
    let keys = tempfile::tempdir()?;
    let ca = ca_of(server.data_dir());
    println!(
        "telemetry-bench: {} sites × {} batches × {} records × {} samples",
        args.sites, args.batches, args.records, args.samples
    );

    let joined = runtime.block_on(async {
        let slots = Arc::new(Semaphore::new(args.join_concurrency));
        let mut joins = Vec::new();
        for i in 0..args.sites {
            let (ca, token, slots) = (ca.clone(), token.clone(), slots.clone());
            let dir = keys.path().join(format!("s{i:05}"));
            joins.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.ok()?;
                std::fs::create_dir_all(&dir).ok()?;
                let name = format!("bench-{i:05}");
                join_as(quic, ca, &token, &name, PROTOCOL_VERSION, &dir)
                    .await
                    .ok()
            }));
        }
        let mut identities = Vec::new();
        for join in joins {
            if let Ok(Some(identity)) = join.await {
                identities.push(identity);
            }
        }
        identities
    });
    anyhow::ensure!(
        joined.len() == args.sites,
        "only {} of {} sites joined",
        joined.len(),
        args.sites
    );

    let stored = Arc::new(AtomicU64::new(0));
    let (ticks_before, started) = (cpu_ticks(pid), Instant::now());
    let failures = runtime.block_on(async {
        let mut senders = Vec::new();
        for (key, issued) in joined {
            let (ca, stored) = (ca.clone(), stored.clone());
            let (batches, records, samples) = (args.batches, args.records, args.samples);
            senders.push(tokio::spawn(async move {
                let identity = (vec![issued.cert_der.clone().into()], key.private_key_der());
                let trust = continuum_shared::tls::ServerTrust::Ca(ca);
                let peer = Peer::connect(quic, trust, Some(identity)).await?;
                let mut stream = peer
                    .link
                    .open(StreamKind::Telemetry, PROTOCOL_VERSION)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut seq = 0u64;
                for _ in 0..batches {
                    let batch = Batch {
                        epoch: 1,
                        records: (0..records)
                            .map(|_| {
                                seq += 1;
                                record(seq, samples)
                            })
                            .collect(),
                        dropped: Vec::new(),
                    };
                    stream.send(&batch).await.map_err(|e| e.to_string())?;
                    match stream
                        .recv_within::<TelemetryReply>(Duration::from_secs(120))
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        TelemetryReply::Ack { through, .. } if through == seq => {
                            stored.fetch_add((records * samples) as u64, Ordering::Relaxed);
                        }
                        other => return Err(format!("unexpected reply {other:?}")),
                    }
                }
                Ok::<(), String>(())
            }));
        }
        let mut failures = Vec::new();
        for sender in senders {
            match sender.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(e),
                Err(e) => failures.push(e.to_string()),
            }
        }
        failures
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - ticks_before) as f64 / 100.0;
    let samples = stored.load(Ordering::Relaxed);
    let batches = (args.sites * args.batches) as f64;
    println!("  stored:              {samples} samples in {elapsed:.1} s");
    println!(
        "  ingest rate:         {:.0} samples/s, {:.0} batches/s (each acknowledged after a durable flush)",
        samples as f64 / elapsed,
        batches / elapsed
    );
    println!(
        "  control plane:       {cpu:.1} s CPU, RSS {} MiB after",
        rss_kib(pid) / 1024
    );
    if !failures.is_empty() {
        println!(
            "  failures:            {} (first: {})",
            failures.len(),
            failures[0]
        );
    }
    let data = server.data_dir().join("telemetry.sled");
    let size: u64 = walk_size(&data);
    println!("  telemetry.sled:      {} MiB on disk", size >> 20);
    anyhow::ensure!(failures.is_empty(), "some sites failed");
    Ok(())
}

fn walk_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        walk_size(&path)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
