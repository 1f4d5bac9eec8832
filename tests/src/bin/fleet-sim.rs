//! The fleet simulator: N in-process agents, each with its own key, certificate and
//! QUIC connection, joined with one fleet token to a real `continuum serve`.
//!
//! It prints how long the joins took, how long until every site was online, the
//! control plane's resident memory, and the memory per simulated agent; it also runs
//! one real `continuum-agent` process beside them and reports its idle RSS. Then it
//! runs two single-wave rollouts to every site (the first desired state the sites get,
//! then a new release) and reports for each how long the sites took to verify it (p50,
//! p99, max), and the CPU time of the control plane and the agents meanwhile.
//!
//! Build everything in release mode first, then run it from the target directory:
//! `cargo build --release --workspace && target/release/fleet-sim --agents 1000`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use continuum_agent::run::RunOptions;
use continuum_tests::agent::Agent;
use continuum_tests::procfs::{cpu_ticks, rss_kib};
use continuum_tests::server::{Server, ServerOptions};
use tokio::sync::{Semaphore, watch};

/// Simulate a fleet against a real control plane.
#[derive(Debug, Parser)]
struct Args {
    /// How many agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Heartbeat interval the control plane gives agents.
    #[arg(long, default_value = "10s")]
    heartbeat: String,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 64)]
    join_concurrency: usize,
    /// How long to hold the fleet online before measuring memory, in seconds.
    #[arg(long, default_value_t = 15)]
    hold_secs: u64,
    /// Give up if the fleet is not online after this many seconds.
    #[arg(long, default_value_t = 120)]
    limit_secs: u64,
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn online(server: &Server) -> usize {
    server
        .sites()
        .iter()
        .filter(|s| s["online"] == true)
        .count()
}

/// The generation of the desired state in force at an agent, and when it went into
/// force (the file's modification time).
fn in_force(state_dir: &std::path::Path) -> Option<(u64, std::time::SystemTime)> {
    let path = state_dir.join("desired.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    Some((value["generation"].as_u64()?, modified))
}

/// Installs a single-wave policy that takes every site at once.
fn everyone(server: &Server, sites: usize) -> anyhow::Result<()> {
    std::fs::write(
        server.data_dir().join("policies/everyone.toml"),
        format!(
            "[rollout.everyone]\nwaves = [{{ name = \"all\", percent = 100 }}]\nmax_parallel = {}\n",
            sites + 1
        ),
    )?;
    let until = Instant::now() + Duration::from_secs(20);
    while !server.cli(&["policies"]).ok().stdout.contains("everyone") {
        anyhow::ensure!(Instant::now() < until, "the policy did not load");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Starts a single-wave rollout of `version` to every site and measures how long until
/// each agent verified its new desired state and put it in force (the time its
/// `desired.json` was written; nothing polls the control plane meanwhile).
fn propagation(
    server: &Server,
    agents: &[std::path::PathBuf],
    version: &str,
    what: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let sites = agents.len();
    let file = continuum_tests::releases::write(
        server.root(),
        &format!("sim-{version}.toml"),
        &continuum_tests::releases::manifest("sim", version),
    );
    server
        .cli(&["release", "publish", file.to_str().unwrap_or_default()])
        .ok();
    let server_pid = server.pid().context("server pid")?;
    let (cpu_before, sim_before) = (cpu_ticks(server_pid), cpu_ticks(std::process::id()));
    let before: Vec<u64> = agents
        .iter()
        .map(|d| in_force(d).map_or(0, |(g, _)| g))
        .collect();
    let started = std::time::SystemTime::now();
    let clock = Instant::now();
    server
        .cli(&["rollout", "start", "sim", version, "--policy", "everyone"])
        .ok();
    let times = loop {
        anyhow::ensure!(clock.elapsed() < limit, "not every site verified in time");
        std::thread::sleep(Duration::from_millis(250));
        let now: Vec<Option<Duration>> = agents
            .iter()
            .zip(&before)
            .map(|(dir, old)| {
                in_force(dir)
                    .filter(|(g, _)| g > old)
                    .map(|(_, at)| at.duration_since(started).unwrap_or_default())
            })
            .collect();
        if now.iter().all(Option::is_some) {
            break now.into_iter().flatten().collect::<Vec<_>>();
        }
    };
    let mut times = times;
    times.sort();
    let pick = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "  rollout propagation ({what}): {sites} sites verified it: p50 {:.2} s, p99 {:.2} s, max {:.2} s after `rollout start`",
        pick(0.5).as_secs_f64(),
        pick(0.99).as_secs_f64(),
        pick(1.0).as_secs_f64()
    );
    println!(
        "    CPU during it:     control plane {:.2} s, simulated agents {:.2} s",
        (cpu_ticks(server_pid) - cpu_before) as f64 / 100.0,
        (cpu_ticks(std::process::id()) - sim_before) as f64 / 100.0
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_fd_limit();
    continuum_shared::tls::install_crypto_provider();
    let n = args.agents;
    let server = Server::start_with(ServerOptions {
        heartbeat: args.heartbeat.clone(),
        ..ServerOptions::default()
    });
    let server_pid = server.pid().context("server pid")?;
    let token = server.token("sim", &["--uses", &(n + 1).to_string(), "--ttl", "2h"]);
    let root = server.root().join("sim");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let baseline_kib = rss_kib(std::process::id());

    println!("fleet simulator: {n} agents, heartbeat {}", args.heartbeat);
    let joined_at = Instant::now();
    runtime.block_on(async {
        let slots = Arc::new(Semaphore::new(args.join_concurrency));
        let mut joins = Vec::with_capacity(n);
        for i in 0..n {
            let (token, dir, slots) = (token.clone(), root.join(format!("a{i:05}")), slots.clone());
            joins.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                let options = continuum_agent::join::JoinOptions {
                    name: Some(format!("sim-{i:05}")),
                    image_root_sha256: None,
                };
                continuum_agent::join::join(&token, options, &dir).await
            }));
        }
        for join in joins {
            join.await.context("join task")?.context("join")?;
        }
        anyhow::Ok(())
    })?;
    let join_time = joined_at.elapsed();
    println!(
        "  joined:              {n} sites in {:.2} s ({:.0} joins/s)",
        join_time.as_secs_f64(),
        n as f64 / join_time.as_secs_f64()
    );

    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let mut runs = Vec::with_capacity(n);
    for i in 0..n {
        let options = RunOptions {
            state_dir: root.join(format!("a{i:05}")),
            reconnect_base: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            services: continuum_agent::run::Services::None,
            telemetry: Default::default(),
        };
        let mut stopped = stopped.clone();
        runs.push(runtime.spawn(async move {
            let _ = continuum_agent::run::run(options, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
        }));
    }
    let mut seen = 0;
    let mut progress = Vec::new();
    while seen < n {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(args.limit_secs),
            "only {seen} of {n} online after {}s",
            args.limit_secs
        );
        std::thread::sleep(Duration::from_millis(200));
        seen = online(&server);
        progress.push(format!("{:.1}s:{seen}", started.elapsed().as_secs_f64()));
    }
    println!("  online over time:    {}", progress.join(" "));
    let online_time = started.elapsed();
    println!(
        "  all online:          {:.2} s after the agents started",
        online_time.as_secs_f64()
    );

    let mut real = Agent::new(server.root(), "real");
    real.join(&token, Some("real-agent")).ok();
    real.start();
    real.wait_online();
    std::thread::sleep(Duration::from_secs(args.hold_secs));
    anyhow::ensure!(online(&server) == n + 1, "sites dropped while holding");

    let server_kib = rss_kib(server_pid);
    let sim_kib = rss_kib(std::process::id()).saturating_sub(baseline_kib);
    let agent_kib = real.pid().map(rss_kib).unwrap_or(0);
    println!(
        "  control plane RSS:   {:.1} MiB with {} sites online",
        server_kib as f64 / 1024.0,
        n + 1
    );
    println!(
        "  per simulated agent: {:.1} KiB (simulator RSS growth / {n})",
        sim_kib as f64 / n as f64
    );
    println!(
        "  one real agent RSS:  {:.1} MiB (idle `continuum-agent run`)",
        agent_kib as f64 / 1024.0
    );

    let dirs: Vec<_> = (0..n).map(|i| root.join(format!("a{i:05}"))).collect();
    let limit = Duration::from_secs(args.limit_secs);
    everyone(&server, n)?;
    // A site's first desired state also lays out its TUF store; later ones change it.
    propagation(&server, &dirs, "1.0.0", "first desired state", limit)?;
    propagation(&server, &dirs, "1.1.0", "a new release", limit)?;

    let _ = stop.send(true);
    runtime.block_on(async {
        for run in runs {
            let _ = run.await;
        }
    });
    Ok(())
}
