//! `continuum serve`: prepares the data directory (keys on first start, the first admin
//! operator), binds the listeners, prints how to use it, and runs until signalled.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use continuum_shared::tls::hex;
use tokio::net::TcpListener;

use crate::agents::{UDP_RECEIVE_BUFFER, bind_endpoint, quic_server_config, server_tls};
use crate::cli::ServeArgs;
use crate::client::ClientFile;
use crate::client::config::user_client_file;
use crate::datadir::{DataDir, load_or_create_keys};
use crate::model::Role;
use crate::plane::{ControlPlane, Settings};
use crate::policy::set::Policies;
use crate::public_tls::{CertFiles, PublicCert};
use crate::server::{Listeners, run};
use crate::store::{SledStore, Store};
use crate::tuf::Lifetimes;
use crate::tuf::director::Director;
use crate::tuf::image::ImageRepo;
use crate::{operators, tokens};

/// The names the server certificate covers: what is advertised, plus loopback.
fn server_names(advertise: &[String]) -> Vec<String> {
    let mut names: Vec<String> = advertise.to_vec();
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_owned());
        }
    }
    names
}

fn default_advertise() -> Vec<String> {
    let host = continuum_shared::names::local_hostname();
    let mut names = Vec::new();
    if continuum_shared::tls::server_name(&host).is_ok() && host != "localhost" {
        names.push(host);
    }
    names.push("127.0.0.1".to_owned());
    names
}

/// Where the CLI on this machine reaches the API.
fn local_api_url(listen: SocketAddr) -> String {
    let ip: IpAddr = if listen.ip().is_unspecified() {
        if listen.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        }
    } else {
        listen.ip()
    };
    format!("https://{}", SocketAddr::new(ip, listen.port()))
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Runs the control plane.
pub async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let advertise = if args.advertise.is_empty() {
        default_advertise()
    } else {
        args.advertise.clone()
    };
    for name in &advertise {
        continuum_shared::tls::server_name(name)
            .map_err(|e| anyhow::anyhow!("--advertise: {e}"))?;
    }
    let dir = DataDir::new(&args.data_dir);
    let keys = load_or_create_keys(&dir, &server_names(&advertise))
        .with_context(|| format!("preparing the data directory {}", dir.root().display()))?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.state(), args.state_cache_mb << 20)?);

    let quic_config = quic_server_config(&keys.server, keys.ca.cert_der())?;
    let (quic, udp_buffer) = bind_endpoint(quic_config, args.quic_listen)
        .with_context(|| format!("cannot listen for agents on udp {}", args.quic_listen))?;
    // Linux reports twice the size it books; less than asked means rmem_max capped it.
    if udp_buffer < UDP_RECEIVE_BUFFER {
        tracing::warn!(
            granted = udp_buffer,
            wanted = UDP_RECEIVE_BUFFER,
            "the kernel capped the UDP receive buffer; raise net.core.rmem_max so fleet-wide reconnects are not dropped"
        );
    }
    let https = TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("cannot listen for the API on tcp {}", args.http_listen))?;
    let quic_addr = quic.local_addr()?;
    let http_addr = https.local_addr()?;
    let public = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            PublicCert::load(CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .map_err(anyhow::Error::msg)?,
        )),
        _ => None,
    };
    let install_hosts: Vec<&String> = match &public {
        Some(public) => advertise.iter().filter(|h| public.covers(h)).collect(),
        None => advertise.iter().collect(),
    };
    if install_hosts.is_empty() {
        anyhow::bail!(
            "--tls-cert {} covers none of the advertised names ({}); pass --advertise with a name it covers",
            args.tls_cert.as_deref().unwrap_or(Path::new("")).display(),
            advertise.join(", ")
        );
    }
    let install_urls: Vec<String> = install_hosts
        .iter()
        .map(|h| format!("https://{}", host_port(h, http_addr.port())))
        .collect();
    let alpn = vec![b"http/1.1".to_vec()];
    let https_tls = Arc::new(match &public {
        Some(public) => {
            public
                .watch(install_hosts.iter().map(|h| h.to_string()).collect())
                .map_err(anyhow::Error::msg)?;
            public.server_config(alpn)?
        }
        None => server_tls(&keys.server, keys.ca.cert_der(), alpn)?,
    });

    // The CLI on this machine: the local listener and the own CA, or with a public
    // certificate a name it covers and the system's roots (an empty `ca`).
    let (api_url, client_ca) = match &public {
        Some(_) => (install_urls[0].clone(), String::new()),
        None => (local_api_url(http_addr), keys.ca.cert_pem().to_owned()),
    };
    let first_admin = if operators::list(store.as_ref())?.is_empty() {
        let (_, credential) = operators::create(store.as_ref(), "admin", Role::Admin, "serve")?;
        Some(credential)
    } else {
        None
    };
    let client_file = dir.client_file();
    if let Some(credential) = &first_admin {
        let file = ClientFile {
            server: api_url.clone(),
            token: credential.clone(),
            ca: client_ca,
        };
        file.write(&client_file)?;
        if let Some(user_file) = user_client_file().filter(|p| !p.exists())
            && let Err(e) = file.write(&user_file)
        {
            tracing::warn!(error = %e, "could not write the user's client file");
        }
    } else if let Ok(mut file) = ClientFile::read(&client_file) {
        // Keep the local client file pointing at where the API listens now.
        if file.server != api_url || file.ca != client_ca {
            file.server = api_url.clone();
            file.ca = client_ca;
            file.write(&client_file)?;
        }
    }

    let agent_addresses: Vec<String> = advertise
        .iter()
        .map(|h| host_port(h, quic_addr.port()))
        .collect();
    let lifetimes = Lifetimes {
        timestamp: args.timestamp_ttl,
        ..Lifetimes::default()
    };
    let (image, image_created) = ImageRepo::open(dir.root(), lifetimes.clone()).await?;
    let (director, director_created) = Director::open(dir.root(), lifetimes).await?;
    let mut created = keys.created.clone();
    created.extend(image_created);
    created.extend(director_created);
    let (vault, vault_created) =
        crate::secrets::Vault::open(&dir).map_err(|e| anyhow::anyhow!("the secrets key: {e}"))?;
    if vault_created {
        created.push("secrets key");
    }
    let policies_dir = args
        .policies
        .clone()
        .unwrap_or_else(|| dir.root().join("policies"));
    let policies = Policies::open(&policies_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    policies
        .watch()
        .map_err(|e| anyhow::anyhow!("cannot watch the policies directory: {e}"))?;
    let export = match &args.otlp_endpoint {
        Some(endpoint) => Some(crate::telemetry::otlp::start(
            crate::telemetry::otlp::Endpoint::parse(endpoint).map_err(|e| anyhow::anyhow!(e))?,
        )),
        None => None,
    };
    let telemetry_settings = crate::telemetry::Settings {
        retention: args.telemetry_retention,
        ..Default::default()
    };
    let telemetry = crate::telemetry::Telemetry::open(
        &dir.root().join("telemetry.sled"),
        telemetry_settings,
        export,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let metrics = match args.metrics_listen.0 {
        Some(address) => Some(TcpListener::bind(address).await.with_context(|| {
            format!(
                "binding the metrics listener on {address} (--metrics-listen; `none` turns it off)"
            )
        })?),
        None => None,
    };
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    let agents =
        crate::install::AgentBinaries::find(args.agent_dir.as_deref()).with_context(|| {
            format!(
                "reading agent binaries from {}",
                args.agent_dir.as_deref().map_or_else(
                    || "beside this executable".into(),
                    |d| d.display().to_string()
                )
            )
        })?;
    let cp = Arc::new(ControlPlane {
        telemetry: Arc::new(telemetry),
        vault,
        store,
        image,
        director,
        policies: policies.clone(),
        ca: keys.ca,
        fleet: Default::default(),
        settings: Settings {
            agent_addresses: agent_addresses.clone(),
            site_cert_ttl: args.site_cert_ttl,
            heartbeat: args.heartbeat_interval,
            timestamp_ttl: args.timestamp_ttl,
            install_urls,
            tls_pin: match &public {
                Some(_) => None,
                None => Some(
                    crate::install::key_pin(&keys.server)
                        .map_err(|e| anyhow::anyhow!("the server key: {e}"))?,
                ),
            },
            agents,
        },
        data_dir: dir.clone(),
    });

    crate::rollout::controller::spawn(cp.clone());
    crate::decommission::spawn(cp.clone());
    println!("Continuum control plane {}", env!("CARGO_PKG_VERSION"));
    println!("  data directory:  {}", dir.root().display());
    println!(
        "  agents (QUIC):   {quic_addr}  (tokens point agents at {})",
        agent_addresses.join(", ")
    );
    println!("  API (HTTPS):     {api_url}  (listening on {http_addr})");
    if let Some(public) = &public {
        let days = public.days_left();
        println!(
            "  certificate:     {}  (publicly trusted; expires in {days} days; reloaded when it changes)",
            public.cert_path().display()
        );
        if days < 14 {
            tracing::warn!(
                days_left = days,
                "the HTTPS certificate expires soon; renew it (the new file is picked up by itself)"
            );
        }
    }
    match metrics_addr {
        Some(address) => println!("  metrics:         http://{address}/metrics  (Prometheus)"),
        None => println!("  metrics:         off"),
    }
    if let Some(endpoint) = &args.otlp_endpoint {
        println!("  OTLP export:     {endpoint}");
    }
    println!("  CA sha256:       {}", hex(&cp.ca.fingerprint()));
    match cp.settings.agents.arches().as_slice() {
        [] => println!("  installer:       no agent binary to offer (--agent-dir)"),
        arches => println!(
            "  installer:       {}/install.sh  (agents for linux/{})",
            cp.settings.install_urls.first().map_or("", String::as_str),
            arches.join(", linux/")
        ),
    }
    let snapshot = policies.snapshot();
    println!(
        "  policies:        {}  ({} rollout policies{})",
        policies_dir.display(),
        snapshot.rollouts().count(),
        match snapshot.rejected.len() {
            0 => String::new(),
            n => format!(", {n} rejected file(s): see `continuum policies`"),
        }
    );
    if !created.is_empty() {
        println!("  created:         {}", created.join(", "));
    }
    if cp.image.holds_release_key() {
        println!(
            "  release key:     held in {}/keys (fine for trying things out; production keeps release and root keys offline: `continuum keys init`)",
            dir.root().display()
        );
    }
    if let Some(credential) = &first_admin {
        println!();
        println!(
            "First start. The admin credential, shown only now (also saved, mode 0600, in {}):",
            client_file.display()
        );
        println!();
        println!("  {credential}");
    }
    println!();
    println!("Use the CLI from this directory, or anywhere as this user:");
    println!("  continuum sites");
    println!(
        "  continuum token create --name my-site    # then `continuum-agent join TOKEN` at the site"
    );
    println!(
        "Detected facts that tokens may not set as labels: {}",
        tokens::DETECTED_LABELS.join(", ")
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let listeners = Listeners {
        quic,
        https,
        metrics,
    };
    run(cp, listeners, https_tls, shutdown_signal()).await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
