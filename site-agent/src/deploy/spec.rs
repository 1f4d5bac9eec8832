//! From a verified release to the engine's container specification, and the hash that
//! tells whether a running container still matches it.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use continuum_shared::manifest::{Release, Restart};

use crate::engine::{LABEL_RELEASE, LABEL_SERVICE, LABEL_SITE, LABEL_SPEC};
use crate::secrets::Placed;
use crate::trust::VerifiedRelease;

/// What the engine is asked to run for one release.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The container name.
    pub name: String,
    /// The hash of everything that defines the container.
    pub hash: String,
    /// The image to run: an image id for archives, the pinned reference otherwise.
    pub image: String,
    /// The create request.
    pub body: ContainerCreateBody,
    /// The registry login for pulling the image, opened from its secret just before a
    /// deploy (never part of the hash, never stored).
    pub login: Option<continuum_shared::secrets::RegistryLogin>,
}

/// The image a release runs: the id the signed archive record names, or the reference
/// the manifest pins.
pub fn image_of(verified: &VerifiedRelease) -> String {
    match &verified.archive {
        Some(archive) => archive.image_id.clone(),
        None => verified.release.container.image.clone(),
    }
}

/// Builds the specification of `verified` for `site`, with its secrets `placed` on the
/// tmpfs.
pub fn build(site: &str, verified: &VerifiedRelease, placed: &[Placed]) -> Spec {
    let release = &verified.release;
    let image = image_of(verified);
    let hash = spec_hash(release, &image, placed);
    let name = format!("continuum-{site}-{}-{}", release.service, &hash[..12]);
    let c = &release.container;
    let labels = HashMap::from([
        (LABEL_SITE.to_owned(), site.to_owned()),
        (LABEL_SERVICE.to_owned(), release.service.clone()),
        (LABEL_RELEASE.to_owned(), release.version.clone()),
        (LABEL_SPEC.to_owned(), hash.clone()),
    ]);
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &c.ports {
        bindings
            .entry(format!("{}/{}", p.container, p.protocol))
            .or_default()
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: Some(p.host.to_string()),
            });
    }
    let binds = c
        .volumes
        .iter()
        .map(|v| {
            let mode = if v.read_only { ":ro" } else { "" };
            format!("{}:{}{mode}", v.source, v.target)
        })
        .collect::<Vec<_>>();
    // Bind mounts that fail when the file is missing (after a reboot emptied the tmpfs)
    // rather than have the engine make a directory in its place.
    let mounts: Vec<Mount> = placed
        .iter()
        .map(|p| Mount {
            target: Some(p.target.clone()),
            source: Some(p.host.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        })
        .collect();
    let restart = match c.restart {
        Restart::No => RestartPolicyNameEnum::NO,
        Restart::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        Restart::Always => RestartPolicyNameEnum::ALWAYS,
        Restart::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
    };
    let host_config = HostConfig {
        port_bindings: (!bindings.is_empty()).then(|| bindings.clone()),
        binds: (!binds.is_empty()).then_some(binds),
        mounts: (!mounts.is_empty()).then_some(mounts),
        memory: c.memory.map(|m| m.min(i64::MAX as u64) as i64),
        nano_cpus: c.cpus.map(|cpus| (cpus * 1e9) as i64),
        restart_policy: Some(RestartPolicy {
            name: Some(restart),
            maximum_retry_count: None,
        }),
        privileged: Some(c.privileged),
        network_mode: c.host_network.then(|| "host".to_owned()),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        cmd: (!c.command.is_empty()).then(|| c.command.clone()),
        env: Some(c.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        exposed_ports: (!bindings.is_empty()).then(|| bindings.keys().cloned().collect()),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    };
    Spec {
        name,
        hash,
        image,
        body,
        login: None,
    }
}

/// A hash over everything that defines the container: a change in any of it (a new
/// version of one of its secrets too) means a new container.
fn spec_hash(release: &Release, image: &str, placed: &[Placed]) -> String {
    let mut text =
        serde_json::to_vec(&(&release.container, image, &release.version)).unwrap_or_default();
    text.extend_from_slice(release.service.as_bytes());
    for p in placed {
        text.extend_from_slice(format!("\0{}\0{}\0{}", p.name, p.version, p.target).as_bytes());
    }
    continuum_shared::tls::hex(&continuum_shared::tls::sha256(&text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use continuum_shared::manifest::{self, ImageSource};

    fn verified(text: &str) -> VerifiedRelease {
        VerifiedRelease {
            target: "t".into(),
            sha256: "0".repeat(64),
            release: manifest::parse("t.toml", text, ImageSource::Archive).unwrap(),
            archive: None,
            secrets: Default::default(),
        }
    }

    const WEB: &str = r#"
[service]
name = "web"
version = "1"
[container]
image = "web:1"
env = { A = "b" }
ports = ["127.0.0.1:8080:80/tcp"]
volumes = ["/srv/web:/www:ro"]
memory = "64MiB"
cpus = 0.5
restart = "always"
[health]
tcp = "127.0.0.1:8080"
"#;

    #[test]
    fn the_release_becomes_the_engines_settings() {
        let spec = build("edge-1", &verified(WEB), &[]);
        let host = spec.body.host_config.as_ref().unwrap();
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(
            host.binds.as_deref(),
            Some(&["/srv/web:/www:ro".to_owned()][..])
        );
        let bound = &host.port_bindings.as_ref().unwrap()["80/tcp"];
        assert_eq!(
            bound.as_ref().unwrap()[0].host_port.as_deref(),
            Some("8080")
        );
        assert_eq!(spec.body.env.as_deref(), Some(&["A=b".to_owned()][..]));
        let labels = spec.body.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_SITE], "edge-1");
        assert_eq!(labels[LABEL_SPEC], spec.hash);
        assert!(spec.name.starts_with("continuum-edge-1-web-"));
    }

    #[test]
    fn any_change_to_the_container_changes_the_hash() {
        let a = build("s", &verified(WEB), &[]).hash;
        let b = build("s", &verified(&WEB.replace("A = \"b\"", "A = \"c\"")), &[]).hash;
        let c = build("s", &verified(&WEB.replace("0.5", "1.5")), &[]).hash;
        let secret = |version| Placed {
            name: "db".into(),
            version,
            host: "/dev/shm/x/db".into(),
            target: "/run/secrets/db".into(),
        };
        let d = build("s", &verified(WEB), &[secret(1)]);
        let e = build("s", &verified(WEB), &[secret(2)]).hash;
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d.hash);
        assert_ne!(d.hash, e, "a new version of a secret makes a new container");
        let mounts = d.body.host_config.unwrap().mounts.unwrap();
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[0].target.as_deref(), Some("/run/secrets/db"));
        assert_eq!(
            a,
            build("s", &verified(WEB), &[]).hash,
            "and the hash is stable"
        );
    }
}
