//! A simulated fleet for rollout tests: many real agents in this process, each with
//! its own key, certificate, QUIC link and TUF verification, joined to a real control
//! plane with varied labels. Their services are not run: each site reports what the
//! test says (the release it was given runs healthily, or fails its health check), and
//! keeps the history of the releases its verified desired state named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use continuum_agent::deploy::Reports;
use continuum_agent::run::{RunOptions, Services};
use continuum_agent::trust::DesiredState;
use continuum_shared::protocol::{HealthState, ServicePhase, ServiceReport};
use tokio::sync::watch;

use crate::server::Server;

/// A site of the simulated fleet.
pub struct SimSite {
    /// Its name (`sim-000`, …).
    pub name: String,
    /// The labels its token gave it.
    pub labels: BTreeMap<String, String>,
    /// Its state directory.
    pub dir: PathBuf,
    history: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
}

impl SimSite {
    /// The releases of `service` its desired state named, in order (repeats folded; an
    /// empty entry when it named none after naming one), as far as the agent handed them
    /// on: a state replaced before the reporter saw it is not recorded.
    pub fn history(&self, service: &str) -> Vec<String> {
        lock(&self.history)
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    /// The release of `service` its desired state names now.
    pub fn current(&self, service: &str) -> Option<String> {
        self.history(service).pop().filter(|v| !v.is_empty())
    }

    /// Whether it has the label `key=value`.
    pub fn has(&self, key: &str, value: &str) -> bool {
        self.labels.get(key).is_some_and(|v| v == value)
    }
}

/// Sites that report a release as failing its health check: (site, version).
type Failing = Arc<Mutex<BTreeSet<(String, String)>>>;

/// Many in-process agents on one control plane.
pub struct Fleet {
    /// The sites, in the order of their names.
    pub sites: Vec<SimSite>,
    failing: Failing,
    stop: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The labels of the `i`-th site: tiers 1 to 3 (one in ten is tier 1, four are tier 2),
/// three regions in turn, the first four sites canaries, and every 25th retiring.
pub fn labels_of(i: usize) -> BTreeMap<String, String> {
    let tier = match i % 10 {
        0 => "T1",
        1..=4 => "T2",
        _ => "T3",
    };
    let mut labels = BTreeMap::from([
        ("tier".to_owned(), tier.to_owned()),
        ("region".to_owned(), ["eu", "us", "asia"][i % 3].to_owned()),
    ]);
    if i < 4 {
        labels.insert("canary".into(), "true".into());
    }
    if i % 25 == 24 {
        labels.insert("retiring".into(), "true".into());
    }
    labels
}

impl Fleet {
    /// Joins `n` sites to `server` and runs them until every one is online.
    pub fn start(server: &Server, n: usize) -> Fleet {
        continuum_shared::tls::install_crypto_provider();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let root = server.root().join("fleet");
        // One token per set of labels.
        let mut tokens: BTreeMap<BTreeMap<String, String>, String> = BTreeMap::new();
        let mut sites = Vec::with_capacity(n);
        for i in 0..n {
            let labels = labels_of(i);
            if !tokens.contains_key(&labels) {
                let mut args = vec!["--uses".to_owned(), n.to_string()];
                for (k, v) in &labels {
                    args.extend(["--label".to_owned(), format!("{k}={v}")]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let token = server.token(&format!("fleet-{}", tokens.len()), &args);
                tokens.insert(labels.clone(), token);
            }
            sites.push(SimSite {
                name: format!("sim-{i:03}"),
                labels,
                dir: root.join(format!("sim-{i:03}")),
                history: Arc::default(),
            });
        }
        runtime.block_on(async {
            let slots = Arc::new(tokio::sync::Semaphore::new(16));
            let mut joins = Vec::new();
            for site in &sites {
                let token = tokens[&site.labels].clone();
                let (name, dir, slots) = (site.name.clone(), site.dir.clone(), slots.clone());
                joins.push(tokio::spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    let options = continuum_agent::join::JoinOptions {
                        name: Some(name.clone()),
                        image_root_sha256: None,
                    };
                    continuum_agent::join::join(&token, options, &dir)
                        .await
                        .unwrap_or_else(|e| panic!("{name} cannot join: {e}"));
                }));
            }
            for join in joins {
                join.await.expect("join task");
            }
        });
        let failing = Failing::default();
        let (stop, stopped) = watch::channel(false);
        for site in &sites {
            let options = RunOptions {
                state_dir: site.dir.clone(),
                reconnect_base: Duration::from_millis(300),
                reconnect_max: Duration::from_secs(2),
                services: Services::Reported(reporter(
                    site.name.clone(),
                    site.history.clone(),
                    failing.clone(),
                )),
                telemetry: Default::default(),
            };
            let mut stopped = stopped.clone();
            runtime.spawn(async move {
                let _ = continuum_agent::run::run(options, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
            });
        }
        let fleet = Fleet {
            sites,
            failing,
            stop,
            runtime: Some(runtime),
        };
        crate::wait::until(Duration::from_secs(120), "the whole fleet online", || {
            let online = server
                .sites()
                .iter()
                .filter(|s| {
                    s["online"] == true && s["name"].as_str().is_some_and(|n| n.starts_with("sim-"))
                })
                .count();
            (online == n).then_some(())
        });
        fleet
    }

    /// Makes `version` fail its health check at `sites` from now on.
    pub fn fail<'a>(&self, version: &str, sites: impl IntoIterator<Item = &'a str>) {
        let mut failing = lock(&self.failing);
        for site in sites {
            failing.insert((site.to_owned(), version.to_owned()));
        }
    }

    /// The site called `name`.
    pub fn site(&self, name: &str) -> &SimSite {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no simulated site {name}"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// What a simulated site reports for each desired state that goes into force: every
/// release runs and is healthy unless the test made it fail there, in which case the
/// site stays on its last good release and reports the failure, as a real agent does.
fn reporter(
    site: String,
    history: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
    failing: Failing,
) -> Arc<dyn Fn(&DesiredState) -> Reports + Send + Sync> {
    let good: Mutex<BTreeMap<String, String>> = Mutex::default();
    Arc::new(move |state: &DesiredState| {
        let mut good = lock(&good);
        let mut history = lock(&history);
        let mut reports = Reports::new();
        for release in &state.releases {
            let (service, version) = (&release.release.service, &release.release.version);
            let seen = history.entry(service.clone()).or_default();
            if seen.last() != Some(version) {
                seen.push(version.clone());
            }
            let fails = lock(&failing).contains(&(site.clone(), version.clone()));
            if !fails {
                good.insert(service.clone(), version.clone());
            }
            let last_good = good.get(service).cloned();
            reports.insert(
                service.clone(),
                ServiceReport {
                    service: service.clone(),
                    desired: Some(version.clone()),
                    running: last_good.clone(),
                    last_known_good: last_good,
                    phase: if fails {
                        ServicePhase::RolledBack
                    } else {
                        ServicePhase::Running
                    },
                    health: HealthState::Healthy,
                    restarts: 0,
                    last_error: None,
                    failed: fails.then(|| version.clone()),
                    failure: fails.then(|| "simulated: the health check failed".to_owned()),
                    at: continuum_shared::unix_now(),
                    secrets: release.secrets.clone(),
                },
            );
        }
        // A service no longer named is gone from the site, and reported removed.
        for (service, seen) in history.iter_mut() {
            let named = state.releases.iter().any(|r| &r.release.service == service);
            if named {
                continue;
            }
            if seen.last().is_some_and(|v| !v.is_empty()) {
                seen.push(String::new());
            }
            good.remove(service);
            reports.insert(
                service.clone(),
                ServiceReport {
                    service: service.clone(),
                    desired: None,
                    running: None,
                    last_known_good: None,
                    phase: ServicePhase::Removed,
                    health: HealthState::Down,
                    restarts: 0,
                    last_error: None,
                    failed: None,
                    failure: None,
                    at: continuum_shared::unix_now(),
                    secrets: Default::default(),
                },
            );
        }
        reports
    })
}
