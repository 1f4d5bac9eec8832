//! Facts the agent detects about its host, sent in every hello so that placement can
//! select on them. Numeric facts (cpus, memory in bytes) are numbers.

use std::path::Path;

use continuum_shared::labels::{LabelValue, Labels};

/// Detects this host's facts.
pub fn detect() -> Labels {
    let mut labels = Labels::new();
    labels.insert("arch".into(), std::env::consts::ARCH.into());
    labels.insert("os".into(), std::env::consts::OS.into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    labels.insert("cpus".into(), LabelValue::Int(cpus as i64));
    if let Some(memory) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total(&m))
    {
        labels.insert("memory".into(), LabelValue::Int(memory));
    }
    labels.insert(
        "hostname".into(),
        LabelValue::Text(continuum_shared::names::local_hostname()),
    );
    if let Some(engine) = container_engine() {
        labels.insert("engine".into(), engine.into());
    }
    labels.insert("agent_version".into(), crate::VERSION.into());
    labels.insert("agent_target".into(), crate::TARGET.into());
    labels
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Which container engine's socket is present: Docker's or Podman's.
fn container_engine() -> Option<&'static str> {
    if let Ok(host) = std::env::var("DOCKER_HOST")
        && let Some(path) = host.strip_prefix("unix://")
        && Path::new(path).exists()
    {
        return Some(if path.contains("podman") {
            "podman"
        } else {
            "docker"
        });
    }
    if Path::new("/var/run/docker.sock").exists() {
        return Some("docker");
    }
    let user_podman =
        std::env::var_os("XDG_RUNTIME_DIR").map(|d| Path::new(&d).join("podman/podman.sock"));
    if Path::new("/run/podman/podman.sock").exists() || user_podman.is_some_and(|p| p.exists()) {
        return Some("podman");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_bytes() {
        let sample = "MemTotal:       16318480 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(sample), Some(16318480 * 1024));
        assert_eq!(mem_total("nothing"), None);
    }

    #[test]
    fn detected_labels_are_valid_and_numeric_where_they_should_be() {
        let labels = detect();
        continuum_shared::labels::check_labels(&labels).unwrap();
        assert!(labels["cpus"].as_int().unwrap() >= 1);
        assert_eq!(labels["os"].as_text(), Some(std::env::consts::OS));
        assert!(labels.contains_key("hostname"));
    }
}
