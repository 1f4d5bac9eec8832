//! The site's own say over what runs here: `<state dir>/site-policy.toml`, written by
//! the site admin (or the installer), never by the central team.
//!
//! ```toml
//! [admission]
//! allowed_registries = ["registry.example.org", "archive"]  # "archive": shipped with releases
//! require_digest = true          # registry images must be pinned by digest
//! allow_privileged = false
//! allow_host_network = false
//!
//! [budget]                       # what the central team's services may use here, together
//! cpus = 4
//! memory = "8GiB"
//! disk = "50GiB"                 # image archives shipped, and registry images once pulled
//!
//! [cleanup]
//! keep_images = false            # true: images no release here needs stay (old releases' too)
//! remove_volumes = false         # true: a service taken off takes its named volumes (its data)
//! ```
//!
//! Without the file: any registry, digests required, no privileged containers, no host
//! network, no budget, unneeded images removed, volumes kept. The agent reloads the file when it changes; an edit that does not
//! parse or check is rejected with its line and reason, and the previous policy stays.

use std::path::{Path, PathBuf};

use continuum_shared::manifest::units::parse_size;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::trust::VerifiedRelease;

/// The file's name in the state directory.
pub const FILE: &str = "site-policy.toml";

/// The pseudo-registry of images shipped as archives with their releases.
pub const ARCHIVE: &str = "archive";

/// The site's admission policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SitePolicy {
    /// Registries images may come from (`archive` for shipped archives); `None`: any.
    pub allowed_registries: Option<Vec<String>>,
    /// Whether registry images must be pinned by digest.
    pub require_digest: bool,
    /// Whether privileged containers may run.
    pub allow_privileged: bool,
    /// Whether containers may use the host's network.
    pub allow_host_network: bool,
    /// CPUs all services together may use.
    pub cpus: Option<f64>,
    /// Memory all services together may use, in bytes.
    pub memory: Option<u64>,
    /// Disk all shipped image archives together may use, in bytes.
    pub disk: Option<u64>,
    /// Whether images that no release here needs are kept.
    #[serde(default)]
    pub keep_images: bool,
    /// Whether the named volumes of a service taken off the site are removed with it.
    #[serde(default)]
    pub remove_volumes: bool,
}

impl Default for SitePolicy {
    fn default() -> Self {
        SitePolicy {
            allowed_registries: None,
            require_digest: true,
            allow_privileged: false,
            allow_host_network: false,
            cpus: None,
            memory: None,
            disk: None,
            keep_images: false,
            remove_volumes: false,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    admission: RawAdmission,
    #[serde(default)]
    budget: RawBudget,
    #[serde(default)]
    cleanup: RawCleanup,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCleanup {
    keep_images: Option<bool>,
    remove_volumes: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmission {
    allowed_registries: Option<Vec<String>>,
    require_digest: Option<bool>,
    allow_privileged: Option<bool>,
    allow_host_network: Option<bool>,
}

/// CPUs as the site admin writes them: `8` or `0.5`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Cpus {
    Whole(i64),
    Fraction(f64),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    cpus: Option<toml::Spanned<Cpus>>,
    memory: Option<toml::Spanned<String>>,
    disk: Option<toml::Spanned<String>>,
}

/// Parses a policy file's text; errors name the file, line and reason.
pub fn parse(file: &str, text: &str) -> Result<SitePolicy, String> {
    let line_of = |offset: usize| text[..offset.min(text.len())].lines().count().max(1);
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(s.start + 1));
        format!("{file}:{line}: {}", e.message())
    })?;
    let size =
        |value: &Option<toml::Spanned<String>>, field: &str| -> Result<Option<u64>, String> {
            match value {
                None => Ok(None),
                Some(v) => parse_size(v.get_ref()).map(Some).map_err(|e| {
                    format!(
                        "{file}:{}: budget.{field}: {e}",
                        line_of(v.span().start + 1)
                    )
                }),
            }
        };
    let cpus = match &raw.budget.cpus {
        None => None,
        Some(c) => {
            let value = match c.get_ref() {
                Cpus::Whole(n) => *n as f64,
                Cpus::Fraction(x) => *x,
            };
            if !(value.is_finite() && value > 0.0) {
                return Err(format!(
                    "{file}:{}: budget.cpus: a positive number of CPUs",
                    line_of(c.span().start + 1)
                ));
            }
            Some(value)
        }
    };
    Ok(SitePolicy {
        allowed_registries: raw.admission.allowed_registries,
        require_digest: raw.admission.require_digest.unwrap_or(true),
        allow_privileged: raw.admission.allow_privileged.unwrap_or(false),
        allow_host_network: raw.admission.allow_host_network.unwrap_or(false),
        cpus,
        memory: size(&raw.budget.memory, "memory")?,
        disk: size(&raw.budget.disk, "disk")?,
        keep_images: raw.cleanup.keep_images.unwrap_or(false),
        remove_volumes: raw.cleanup.remove_volumes.unwrap_or(false),
    })
}

/// Loads the policy in `state_dir` (the default when there is no file).
pub fn load(state_dir: &Path) -> Result<SitePolicy, String> {
    let path = state_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&path.display().to_string(), &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SitePolicy::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The registry an image reference pulls from (Docker's rules: a first component with a
/// dot or a port, or `localhost`, is a registry; otherwise Docker Hub).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// What the services already admitted use, to check a new one against the budget.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// CPUs.
    pub cpus: f64,
    /// Memory bytes.
    pub memory: u64,
    /// Archive bytes.
    pub disk: u64,
}

impl Usage {
    /// What `release` uses; its disk is its archive's length, or for a registry image
    /// its size once pulled (`pulled`; unknown before, counted as nothing).
    pub fn of(release: &VerifiedRelease, pulled: Option<u64>) -> Usage {
        let c = &release.release.container;
        Usage {
            cpus: c.cpus.unwrap_or(0.0),
            memory: c.memory.unwrap_or(0),
            disk: release
                .archive
                .as_ref()
                .map_or(pulled.unwrap_or(0), |a| a.length),
        }
    }

    /// The sum of two usages.
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            cpus: self.cpus + other.cpus,
            memory: self.memory.saturating_add(other.memory),
            disk: self.disk.saturating_add(other.disk),
        }
    }
}

impl SitePolicy {
    /// Whether `release`, using `mine`, may run here next to services already using
    /// `others`; the reason when not.
    pub fn admit(
        &self,
        release: &VerifiedRelease,
        mine: Usage,
        others: Usage,
    ) -> Result<(), String> {
        let r = &release.release;
        let c = &r.container;
        let refuse = |why: String| {
            Err(format!(
                "{} {} is refused by this site's policy ({FILE}): {why}",
                r.service, r.version
            ))
        };
        let registry = if release.archive.is_some() {
            ARCHIVE
        } else {
            registry_of(&c.image)
        };
        if let Some(allowed) = &self.allowed_registries
            && !allowed.iter().any(|a| a == registry)
        {
            return refuse(format!(
                "images from {registry} are not allowed (allowed: {})",
                allowed.join(", ")
            ));
        }
        if release.archive.is_none()
            && self.require_digest
            && !continuum_shared::manifest::pinned_by_digest(&c.image)
        {
            return refuse(format!("{} is not pinned by digest", c.image));
        }
        if c.privileged && !self.allow_privileged {
            return refuse("privileged containers are not allowed".into());
        }
        if c.host_network && !self.allow_host_network {
            return refuse("the host's network is not allowed".into());
        }
        let total = others.plus(mine);
        if let Some(budget) = self.cpus {
            if c.cpus.is_none() {
                return refuse(format!(
                    "it sets no CPU limit, and this site's services share a budget of {budget} CPUs"
                ));
            }
            if total.cpus > budget + 1e-9 {
                return refuse(format!(
                    "it needs {} CPUs, and only {:.2} of the site's {budget} are left",
                    mine.cpus,
                    (budget - others.cpus).max(0.0)
                ));
            }
        }
        if let Some(budget) = self.memory {
            if c.memory.is_none() {
                return refuse(format!(
                    "it sets no memory limit, and this site's services share a budget of {budget} bytes"
                ));
            }
            if total.memory > budget {
                return refuse(format!(
                    "it needs {} bytes of memory, and only {} of the site's {budget} are left",
                    mine.memory,
                    budget.saturating_sub(others.memory)
                ));
            }
        }
        if let Some(budget) = self.disk
            && total.disk > budget
        {
            return refuse(format!(
                "its image archive is {} bytes, and only {} of the site's {budget}-byte disk budget are left",
                mine.disk,
                budget.saturating_sub(others.disk)
            ));
        }
        Ok(())
    }
}

/// Keeps `policy` in step with the file: reloads on change, rejects a bad edit (logged,
/// and published in `errors`) and keeps the previous policy.
pub fn watch(
    state_dir: PathBuf,
    policy: watch::Sender<SitePolicy>,
    errors: watch::Sender<Option<String>>,
) -> Result<(), String> {
    let mut changes = continuum_shared::watch::watch_dir(&state_dir, |p| {
        p.file_name().is_some_and(|n| n == FILE)
    })?;
    tokio::spawn(async move {
        while changes.next().await.is_some() {
            match load(&state_dir) {
                Ok(new) => {
                    errors.send_replace(None);
                    if policy.send_if_modified(|old| {
                        let changed = *old != new;
                        *old = new.clone();
                        changed
                    }) {
                        info!("site policy reloaded");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "site policy edit rejected; the previous policy stays in force");
                    errors.send_replace(Some(e));
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use continuum_shared::manifest::{self, ImageSource};

    fn release(extra: &str) -> VerifiedRelease {
        let text = format!(
            "[service]\nname = \"web\"\nversion = \"1\"\n[container]\nimage = \"registry.example.org/web@sha256:{}\"\n{extra}\n[health]\ntcp = \"127.0.0.1:80\"\n",
            "ab".repeat(32)
        );
        VerifiedRelease {
            target: "t".into(),
            sha256: "0".repeat(64),
            release: manifest::parse("t.toml", &text, ImageSource::Registry).unwrap(),
            archive: None,
            secrets: Default::default(),
        }
    }

    #[test]
    fn a_bad_edit_names_its_line() {
        let error = parse(
            "p.toml",
            "[admission]\nrequire_digest = true\n\n[budget]\nmemory = \"lots\"\n",
        )
        .unwrap_err();
        assert!(error.starts_with("p.toml:5: budget.memory"), "{error}");
        let error = parse("p.toml", "[admission]\nallow_everything = true\n").unwrap_err();
        assert!(error.starts_with("p.toml:2:"), "{error}");
        assert!(error.contains("allow_everything"), "{error}");
    }

    #[test]
    fn registries_privileges_and_budgets_are_enforced() {
        let policy = parse(
            "p.toml",
            "[admission]\nallowed_registries = [\"registry.example.org\"]\n[budget]\ncpus = 2\nmemory = \"1GiB\"\n",
        )
        .unwrap();
        let fits = release("cpus = 1.0\nmemory = \"512MiB\"");
        assert!(
            policy
                .admit(&fits, Usage::of(&fits, None), Usage::default())
                .is_ok()
        );
        let used = Usage {
            cpus: 1.5,
            memory: 0,
            disk: 0,
        };
        let error = policy
            .admit(&fits, Usage::of(&fits, None), used)
            .unwrap_err();
        assert!(
            error.contains("only 0.50 of the site's 2 are left"),
            "{error}"
        );
        let small = release("memory = \"512MiB\"");
        let error = policy
            .admit(&small, Usage::of(&small, None), Usage::default())
            .unwrap_err();
        assert!(error.contains("no CPU limit"), "{error}");
        let privileged = release("cpus = 1.0\nmemory = \"512MiB\"\nprivileged = true");
        let error = policy
            .admit(&privileged, Usage::of(&privileged, None), Usage::default())
            .unwrap_err();
        assert!(error.contains("privileged"), "{error}");
        let mut other = fits.clone();
        other.release.container.image = format!("docker.io/library/web@sha256:{}", "ab".repeat(32));
        let error = policy
            .admit(&other, Usage::of(&other, None), Usage::default())
            .unwrap_err();
        assert!(
            error.contains("images from docker.io are not allowed"),
            "{error}"
        );
    }

    #[test]
    fn cleanup_keeps_volumes_and_removes_images_unless_told_otherwise() {
        let default = parse("p.toml", "").unwrap();
        assert!(!default.keep_images && !default.remove_volumes);
        let told = parse(
            "p.toml",
            "[cleanup]\nkeep_images = true\nremove_volumes = true\n",
        )
        .unwrap();
        assert!(told.keep_images && told.remove_volumes);
        let error = parse("p.toml", "[cleanup]\nremove_data = true\n").unwrap_err();
        assert!(
            error.starts_with("p.toml:2:") && error.contains("remove_data"),
            "{error}"
        );
    }

    #[test]
    fn the_design_example_parses() {
        let text = "[admission]\nallowed_registries = [\"registry.example.org\"]\nrequire_digest = true\nallow_privileged = false\nallow_host_network = false\n\n[budget]\ncpus = 8\nmemory = \"32GiB\"\ndisk = \"200GiB\"\n";
        let policy = parse("site-policy.toml", text).unwrap();
        assert_eq!(policy.cpus, Some(8.0));
        assert_eq!(policy.memory, Some(32 << 30));
        assert_eq!(policy.disk, Some(200 << 30));
        assert!(parse("p.toml", "[budget]\ncpus = 0.5\n").is_ok());
        let error = parse("p.toml", "\n[budget]\ncpus = -1\n").unwrap_err();
        assert!(error.starts_with("p.toml:3: budget.cpus"), "{error}");
    }

    #[test]
    fn registry_names_follow_dockers_rules() {
        assert_eq!(
            registry_of("registry.example.org/a/b:1"),
            "registry.example.org"
        );
        assert_eq!(registry_of("localhost:5000/a"), "localhost:5000");
        assert_eq!(registry_of("library/busybox"), "docker.io");
        assert_eq!(registry_of("busybox"), "docker.io");
    }
}
