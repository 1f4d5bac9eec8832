//! Decommissioning this site, as the central team orders it.
//!
//! The order is written to `decommission.json` before anything else, so an agent
//! stopped half way finishes the job when it starts again. An agent with an order runs
//! in decommission mode: no services, no self-update. It first removes every container
//! of ours (with their named volumes and images, unless the order keeps data) and the
//! opened secrets, records what it removed, then connects and reports it. The control
//! plane revokes the site on that report; the agent then wipes its state directory and,
//! when the installer put it there, removes its own files (`uninstall.sh` beside the
//! binaries, written by the installer) and exits with the revoked status, which no
//! supervisor restarts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::engine::Engine;
use crate::error::AgentError;

const FILE: &str = "decommission.json";

/// How often, and how long apart, an unreachable engine is tried again.
const ENGINE_TRIES: u32 = 30;
const ENGINE_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Grace given to a container to stop.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// An order to decommission this site, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Keep the services' named volumes and images.
    pub keep_data: bool,
    /// What was removed, once the removal is done.
    #[serde(default)]
    pub report: Option<String>,
}

/// The order standing at this site, if any.
pub fn pending(state_dir: &Path) -> Option<Order> {
    let bytes = std::fs::read(state_dir.join(FILE)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(order) => Some(order),
        Err(e) => {
            // Damaged half way through: the order stood, and keeping data is the safe
            // reading of it.
            warn!(error = %e, "the decommission order is damaged; carrying it out keeping data");
            Some(Order {
                keep_data: true,
                report: None,
            })
        }
    }
}

/// Records `order` durably.
pub fn save(state_dir: &Path, order: &Order) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec_pretty(order).map_err(|e| AgentError::State(e.to_string()))?;
    continuum_shared::files::write_private(&state_dir.join(FILE), &bytes)?;
    Ok(())
}

/// Removes everything of ours at the site: every container carrying the site's label
/// (and, unless `keep_data`, its named volumes and image), and the opened secrets under
/// `secrets_dir`. Returns what was removed, for the report; what could not be removed is
/// said in it too.
pub async fn clean(
    engine: Option<&str>,
    site: &str,
    keep_data: bool,
    secrets_dir: &Path,
) -> String {
    let mut said = Vec::new();
    if let Some(address) = engine {
        // An engine down for a while (restarting, say) is waited for, a few minutes.
        let mut tries = 0;
        loop {
            match Engine::connect(address).await {
                Ok(engine) => {
                    said.push(remove_containers(&engine, site, keep_data).await);
                    break;
                }
                Err(e) if tries >= ENGINE_TRIES => {
                    said.push(format!("containers left in place: {e}"));
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "decommission: the engine is unreachable; trying again");
                    tries += 1;
                    tokio::time::sleep(ENGINE_RETRY).await;
                }
            }
        }
    }
    match std::fs::remove_dir_all(secrets_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => said.push(format!(
            "secrets at {} not wiped: {e}",
            secrets_dir.display()
        )),
        _ => said.push("secrets wiped".into()),
    }
    said.join("; ")
}

async fn remove_containers(engine: &Engine, site: &str, keep_data: bool) -> String {
    let containers = match engine.ours(site).await {
        Ok(containers) => containers,
        Err(e) => return format!("containers left in place: {e}"),
    };
    let (mut removed, mut volumes, mut images, mut failed) = (0, 0, 0, Vec::new());
    let mut image_ids = Vec::new();
    for c in &containers {
        let inspected = engine.inspect(&c.id).await.ok();
        if let Some(image) = inspected.as_ref().and_then(|i| i.image.clone()) {
            image_ids.push(image);
        }
        let named = match keep_data {
            true => Vec::new(),
            false => engine.named_volumes(&c.id).await.unwrap_or_default(),
        };
        let _ = engine.stop(&c.id, STOP_GRACE).await;
        if let Err(e) = engine.remove(&c.id).await {
            failed.push(format!("container {}: {e}", c.name));
            continue;
        }
        removed += 1;
        for volume in named {
            match engine.remove_volume(&volume).await {
                Ok(true) => volumes += 1,
                Ok(false) => {}
                Err(e) => failed.push(format!("volume {volume}: {e}")),
            }
        }
    }
    if !keep_data {
        image_ids.sort();
        image_ids.dedup();
        for image in image_ids {
            match engine.remove_image(&image).await {
                Ok(true) => images += 1,
                Ok(false) => {}
                Err(e) => failed.push(format!("image {image}: {e}")),
            }
        }
    }
    let mut text =
        format!("removed {removed} container(s), {volumes} volume(s), {images} image(s)");
    if keep_data {
        text.push_str(" (volumes and images kept)");
    }
    if !failed.is_empty() {
        text.push_str(&format!("; not removed: {}", failed.join(", ")));
    }
    info!(report = %text, "decommission: the services are gone");
    text
}

/// The last step, once the site is revoked: runs the installer's uninstall script when
/// there is one (it removes the service definition, the binaries and the state
/// directory), else removes the state directory. Returns what it did.
pub fn wipe(state_dir: &Path) -> Result<String, AgentError> {
    let uninstall = uninstall_script(state_dir);
    if let Some(script) = uninstall.filter(|s| s.is_file()) {
        info!(script = %script.display(), "decommission: uninstalling the agent");
        let status = std::process::Command::new("sh")
            .arg(&script)
            .arg("--decommissioned")
            .stdin(std::process::Stdio::null())
            .status()
            .map_err(|e| AgentError::State(format!("running {}: {e}", script.display())))?;
        if !status.success() {
            return Err(AgentError::State(format!(
                "{} failed ({status})",
                script.display()
            )));
        }
        // The script removes the state directory too; make sure.
        remove_state(state_dir)?;
        return Ok(format!("agent uninstalled by {}", script.display()));
    }
    remove_state(state_dir)?;
    Ok(format!("state directory {} removed", state_dir.display()))
}

fn remove_state(state_dir: &Path) -> Result<(), AgentError> {
    match std::fs::remove_dir_all(state_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AgentError::State(format!(
            "removing {}: {e}",
            state_dir.display()
        ))),
        _ => Ok(()),
    }
}

/// The uninstall script the installer leaves beside the agent binary, named in the
/// state directory's `installed-by` file.
fn uninstall_script(state_dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(state_dir.join("installed-by")).ok()?;
    let path = PathBuf::from(text.trim());
    path.is_absolute().then_some(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_order_is_kept_until_done_and_a_damaged_one_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(pending(dir.path()), None);
        let order = Order {
            keep_data: false,
            report: None,
        };
        save(dir.path(), &order).unwrap();
        assert_eq!(pending(dir.path()), Some(order));
        std::fs::write(dir.path().join(FILE), b"{\"keep_da").unwrap();
        assert_eq!(pending(dir.path()).map(|o| o.keep_data), Some(true));
    }

    #[test]
    fn wiping_runs_the_installers_script_or_removes_the_state() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        std::fs::create_dir_all(state.join("upgrade")).unwrap();
        std::fs::write(state.join("site.key"), b"k").unwrap();
        let said = wipe(&state).unwrap();
        assert!(said.contains("removed"), "{said}");
        assert!(!state.exists());

        std::fs::create_dir_all(&state).unwrap();
        let marker = root.path().join("uninstalled");
        let script = root.path().join("uninstall.sh");
        std::fs::write(
            &script,
            format!(
                "echo \"$1\" > {}\nrm -rf {}\n",
                marker.display(),
                state.display()
            ),
        )
        .unwrap();
        std::fs::write(state.join("installed-by"), script.display().to_string()).unwrap();
        let said = wipe(&state).unwrap();
        assert!(said.contains("uninstalled"), "{said}");
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap().trim(),
            "--decommissioned"
        );
        assert!(!state.exists());
    }
}
