//! Checking a manifest as written into a [`Release`], collecting every problem.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;

use super::raw::{self, line_of};
use super::units::{parse_duration, parse_size};
use super::{
    Container, Health, HealthCheck, ImageSource, MAX_RELEASE_SECRETS, Placement, Port, Problem,
    Release, Restart, SecretFile, Strategy, Update, Volume,
};

/// Collects problems while checking.
struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn at<T>(&mut self, value: &Spanned<T>, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            line: line_of(self.text, value.span().start),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn end(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            line: self.text.lines().count().max(1),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        value: Option<&Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(v) => parse_duration(v.get_ref()).unwrap_or_else(|m| {
                self.at(v, field, m);
                default
            }),
        }
    }
}

fn name_ok(name: &str) -> bool {
    crate::names::check_name("service", name).is_ok()
}

/// Whether `version` is a release version: 1 to 64 letters, digits, `. _ + -`.
pub fn version_ok(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 64
        && version.starts_with(|c: char| c.is_ascii_alphanumeric())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
}

/// Whether an image reference names its content by digest (`…@sha256:<64 hex>`).
pub fn pinned_by_digest(image: &str) -> bool {
    image.rsplit_once("@sha256:").is_some_and(|(name, hex)| {
        !name.is_empty() && hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

fn image_ok(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= 512
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "./:@_-".contains(c))
        && !image.starts_with(['.', '-', '/', ':', '@'])
}

fn env_key_ok(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `[ip:]host:container[/tcp|udp]`.
fn parse_port(text: &str) -> Result<Port, String> {
    let bad =
        || format!("{text:?} is not a port mapping like \"8080:80/tcp\" or \"127.0.0.1:8080:80\"");
    let (mapping, protocol) = match text.rsplit_once('/') {
        Some((m, p)) if p == "tcp" || p == "udp" => (m, p.to_owned()),
        Some(_) => return Err(bad()),
        None => (text, "tcp".to_owned()),
    };
    let parts: Vec<&str> = mapping.rsplitn(3, ':').collect();
    let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0);
    match parts.as_slice() {
        [container, host] => Ok(Port {
            host_ip: None,
            host: port(host).ok_or_else(bad)?,
            container: port(container).ok_or_else(bad)?,
            protocol,
        }),
        [container, host, ip] => {
            ip.parse::<std::net::IpAddr>().map_err(|_| bad())?;
            Ok(Port {
                host_ip: Some((*ip).to_owned()),
                host: port(host).ok_or_else(bad)?,
                container: port(container).ok_or_else(bad)?,
                protocol,
            })
        }
        _ => Err(bad()),
    }
}

/// `source:/target[:ro|rw]`, source an absolute path or a volume name.
fn parse_volume(text: &str) -> Result<Volume, String> {
    let bad =
        || format!("{text:?} is not a volume like \"/srv/data:/data\" or \"cache:/cache:ro\"");
    let mut parts = text.split(':');
    let (source, target) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return Err(bad()),
    };
    if parts.next().is_some() || !target.starts_with('/') || target.contains("..") {
        return Err(bad());
    }
    let named = source.starts_with(|c: char| c.is_ascii_alphanumeric())
        && source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !(named || (source.starts_with('/') && !source.contains(".."))) {
        return Err(bad());
    }
    Ok(Volume {
        source: source.to_owned(),
        target: target.to_owned(),
        read_only,
    })
}

fn check_container(c: &mut Checker, raw: raw::Container, source: ImageSource) -> Container {
    let image = raw.image.get_ref().clone();
    if !image_ok(&image) {
        c.at(
            &raw.image,
            "container.image",
            format!("{image:?} is not an image reference"),
        );
    } else if source == ImageSource::Registry && !pinned_by_digest(&image) {
        c.at(
            &raw.image,
            "container.image",
            "the image is neither pinned by digest (name@sha256:<64 hex digits>) nor shipped as an archive (publish with --image-archive FILE)",
        );
    }
    let mut env = BTreeMap::new();
    if let Some(vars) = &raw.env {
        for (key, value) in vars.get_ref() {
            if !env_key_ok(key) {
                c.at(vars, &format!("container.env.{key}"), "environment variable names use letters, digits and _, not starting with a digit");
            } else if value.contains('\0') {
                c.at(
                    vars,
                    &format!("container.env.{key}"),
                    "values may not contain NUL bytes",
                );
            } else {
                env.insert(key.clone(), value.clone());
            }
        }
    }
    let command = raw
        .command
        .as_ref()
        .map(|v| v.get_ref().clone())
        .unwrap_or_default();
    if raw.command.as_ref().is_some_and(|v| v.get_ref().is_empty())
        && let Some(v) = &raw.command
    {
        c.at(
            v,
            "container.command",
            "an empty command; leave it out to use the image's own",
        );
    }
    let mut ports = Vec::new();
    for p in raw.ports.iter().flatten() {
        match parse_port(p.get_ref()) {
            Ok(port) => ports.push(port),
            Err(m) => c.at(p, "container.ports", m),
        }
    }
    let mut volumes = Vec::new();
    for v in raw.volumes.iter().flatten() {
        match parse_volume(v.get_ref()) {
            Ok(volume) => volumes.push(volume),
            Err(m) => c.at(v, "container.volumes", m),
        }
    }
    let memory = raw
        .memory
        .as_ref()
        .and_then(|m| match parse_size(m.get_ref()) {
            Ok(bytes) if bytes >= 4 << 20 => Some(bytes),
            Ok(_) => {
                c.at(m, "container.memory", "at least 4MiB");
                None
            }
            Err(e) => {
                c.at(m, "container.memory", e);
                None
            }
        });
    let cpus = raw.cpus.as_ref().and_then(|v| {
        let n = *v.get_ref();
        if n.is_finite() && n > 0.0 && n <= 1024.0 {
            Some(n)
        } else {
            c.at(
                v,
                "container.cpus",
                "a number of cores greater than 0, like 0.5 or 2",
            );
            None
        }
    });
    let restart = match raw.restart.as_ref().map(|r| (r, r.get_ref().as_str())) {
        None => Restart::Always,
        Some((_, "always")) => Restart::Always,
        Some((_, "no")) => Restart::No,
        Some((_, "on-failure")) => Restart::OnFailure,
        Some((_, "unless-stopped")) => Restart::UnlessStopped,
        Some((r, other)) => {
            c.at(
                r,
                "container.restart",
                format!("{other:?}: use always, unless-stopped, on-failure or no"),
            );
            Restart::Always
        }
    };
    let registry_secret = raw.registry_secret.as_ref().and_then(|s| {
        if name_ok(s.get_ref()) {
            Some(s.get_ref().clone())
        } else {
            c.at(s, "container.registry_secret", SECRET_NAME_RULE);
            None
        }
    });
    let host_network = match raw.network.as_ref().map(|n| (n, n.get_ref().as_str())) {
        None | Some((_, "bridge")) => false,
        Some((_, "host")) => true,
        Some((n, other)) => {
            c.at(
                n,
                "container.network",
                format!("{other:?}: use bridge or host"),
            );
            false
        }
    };
    Container {
        image,
        command,
        env,
        ports,
        volumes,
        memory,
        cpus,
        restart,
        privileged: raw.privileged.as_ref().is_some_and(|p| *p.get_ref()),
        host_network,
        registry_secret,
    }
}

const SECRET_NAME_RULE: &str =
    "a secret name: 1 to 63 lower-case letters, digits, - _ ., starting with a letter or digit";

/// Checks the `[[secrets]]` files: known names, distinct absolute paths that no volume
/// also takes.
fn check_secrets(
    c: &mut Checker,
    raw: Option<Vec<raw::Secret>>,
    container: &Container,
) -> Vec<SecretFile> {
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_RELEASE_SECRETS {
        c.end(
            "secrets",
            format!("at most {MAX_RELEASE_SECRETS} secrets per release"),
        );
    }
    let mut files: Vec<SecretFile> = Vec::new();
    for secret in raw {
        let name = secret.name.get_ref();
        if !name_ok(name) {
            c.at(&secret.name, "secrets.name", SECRET_NAME_RULE);
            continue;
        }
        if files.iter().any(|f| &f.name == name) {
            c.at(
                &secret.name,
                "secrets.name",
                format!("{name:?} is named twice"),
            );
            continue;
        }
        let path = match &secret.path {
            None => format!("/run/secrets/{name}"),
            Some(p) => {
                let text = p.get_ref();
                let clean = text.starts_with('/')
                    && text.len() > 1
                    && text.len() <= 1024
                    && !text.ends_with('/')
                    && !text.contains('\0')
                    && text.split('/').all(|part| part != ".." && part != ".");
                if !clean {
                    c.at(
                        p,
                        "secrets.path",
                        "an absolute file path inside the container, without . or .. parts",
                    );
                    continue;
                }
                text.clone()
            }
        };
        let taken = files.iter().any(|f| f.path == path)
            || container.volumes.iter().any(|v| v.target == path);
        if taken {
            let at = secret.path.as_ref().map_or(&secret.name, |p| p);
            c.at(
                at,
                "secrets.path",
                format!("{path} is already mounted by another secret or a volume"),
            );
            continue;
        }
        files.push(SecretFile {
            name: name.clone(),
            path,
        });
    }
    files
}

fn check_health(c: &mut Checker, raw: Option<raw::Health>) -> Health {
    let default_check = HealthCheck::Exec(vec!["true".into()]);
    let Some(raw) = raw else {
        c.end(
            "health",
            "a health check is required: add [health] with exactly one of http, tcp or exec",
        );
        return Health {
            check: default_check,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(3),
            start_period: Duration::ZERO,
            healthy_after: 1,
        };
    };
    let mut checks = Vec::new();
    if let Some(url) = &raw.http {
        let u = url.get_ref();
        if u.starts_with("http://") && u.len() > 8 && !u.contains(char::is_whitespace) {
            checks.push(HealthCheck::Http(u.clone()));
        } else {
            c.at(
                url,
                "health.http",
                format!("{u:?} is not an http:// URL (the agent probes plain HTTP; use tcp for TLS services)"),
            );
        }
    }
    if let Some(addr) = &raw.tcp {
        match crate::tls::split_address(addr.get_ref()) {
            Some((_, port)) if port > 0 => checks.push(HealthCheck::Tcp(addr.get_ref().clone())),
            _ => c.at(
                addr,
                "health.tcp",
                format!("{:?} is not host:port", addr.get_ref()),
            ),
        }
    }
    if let Some(cmd) = &raw.exec {
        if cmd.get_ref().is_empty() {
            c.at(cmd, "health.exec", "the command is empty");
        } else {
            checks.push(HealthCheck::Exec(cmd.get_ref().clone()));
        }
    }
    let given = [raw.http.is_some(), raw.tcp.is_some(), raw.exec.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given == 0 {
        c.end(
            "health",
            "the health check needs exactly one of http, tcp or exec",
        );
    } else if given > 1 {
        let first = raw
            .http
            .as_ref()
            .map(|s| s.span())
            .or(raw.tcp.as_ref().map(|s| s.span()));
        let line = first.map_or(1, |s| line_of(c.text, s.start));
        c.problems.push(Problem {
            line,
            field: "health".into(),
            message: "give exactly one of http, tcp or exec, not several".into(),
        });
    }
    let interval = c.duration(
        raw.interval.as_ref(),
        "health.interval",
        Duration::from_secs(10),
    );
    let timeout = c.duration(
        raw.timeout.as_ref(),
        "health.timeout",
        Duration::from_secs(3).min(interval),
    );
    let start_period = c.duration(
        raw.start_period.as_ref(),
        "health.start_period",
        Duration::ZERO,
    );
    if interval < Duration::from_millis(100)
        && let Some(v) = &raw.interval
    {
        c.at(v, "health.interval", "at least 100ms");
    }
    if timeout > interval
        && let Some(v) = raw.timeout.as_ref().or(raw.interval.as_ref())
    {
        c.at(
            v,
            "health.timeout",
            "the timeout must not exceed the interval",
        );
    }
    let healthy_after = match &raw.healthy_after {
        Some(n) if *n.get_ref() == 0 || *n.get_ref() > 100 => {
            c.at(
                n,
                "health.healthy_after",
                "between 1 and 100 consecutive successes",
            );
            1
        }
        Some(n) => *n.get_ref(),
        None => 1,
    };
    Health {
        check: checks.into_iter().next().unwrap_or(default_check),
        interval,
        timeout,
        start_period,
        healthy_after,
    }
}

fn check_update(
    c: &mut Checker,
    raw: Option<raw::Update>,
    health: &Health,
    container: &Container,
) -> Update {
    let raw = raw.unwrap_or(raw::Update {
        strategy: None,
        healthy_within: None,
    });
    let strategy = match raw.strategy.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "stop-first")) => Strategy::StopFirst,
        Some((_, "start-first")) => Strategy::StartFirst,
        Some((s, other)) => {
            c.at(
                s,
                "update.strategy",
                format!("{other:?}: use stop-first or start-first"),
            );
            Strategy::StopFirst
        }
    };
    if strategy == Strategy::StartFirst
        && !container.ports.is_empty()
        && let Some(s) = &raw.strategy
    {
        c.at(
            s,
            "update.strategy",
            "start-first runs the old and the new container side by side, so they cannot both publish the same host ports: use stop-first, or publish no ports and probe http://container:PORT/",
        );
    }
    let healthy_within = c.duration(
        raw.healthy_within.as_ref(),
        "update.healthy_within",
        Duration::from_secs(120),
    );
    let needed = health.start_period + health.interval * health.healthy_after;
    if healthy_within < needed
        && let Some(v) = &raw.healthy_within
    {
        c.at(v, "update.healthy_within", format!("too short: the health check needs at least {needed:?} (start period plus healthy_after intervals)"));
    }
    Update {
        strategy,
        healthy_within,
    }
}

fn check_placement(c: &mut Checker, raw: Option<raw::Placement>) -> Placement {
    let raw = raw.unwrap_or(raw::Placement {
        require: None,
        rollout: None,
    });
    let require = raw.require.as_ref().and_then(|r| {
        let text = r.get_ref().trim();
        if text.is_empty() || text.len() > 4096 {
            c.at(
                r,
                "placement.require",
                "an expression of 1 to 4096 characters over site labels",
            );
            None
        } else {
            Some(text.to_owned())
        }
    });
    let rollout = match &raw.rollout {
        Some(r) if name_ok(r.get_ref()) => r.get_ref().clone(),
        Some(r) => {
            c.at(
                r,
                "placement.rollout",
                "a rollout policy name (lower-case letters, digits, - _ .)",
            );
            "default".into()
        }
        None => "default".into(),
    };
    Placement { require, rollout }
}

/// Checks a whole manifest; on failure returns every problem found, in line order.
pub fn release(
    text: &str,
    raw: raw::Manifest,
    source: ImageSource,
) -> Result<Release, Vec<Problem>> {
    let mut c = Checker {
        text,
        problems: Vec::new(),
    };
    if !name_ok(raw.service.name.get_ref()) {
        c.at(
            &raw.service.name,
            "service.name",
            "1 to 63 lower-case letters, digits, - _ ., starting with a letter or digit",
        );
    } else if raw.service.name.get_ref() == super::AGENT_SERVICE {
        c.at(
            &raw.service.name,
            "service.name",
            "continuum-agent is reserved for the agent's own releases (continuum agent-release publish)",
        );
    }
    if !version_ok(raw.service.version.get_ref()) {
        c.at(
            &raw.service.version,
            "service.version",
            "1 to 64 letters, digits, . _ + -, starting with a letter or digit",
        );
    }
    let container = check_container(&mut c, raw.container, source);
    let health = check_health(&mut c, raw.health);
    let update = check_update(&mut c, raw.update, &health, &container);
    let placement = check_placement(&mut c, raw.placement);
    let secrets = check_secrets(&mut c, raw.secrets, &container);
    if !c.problems.is_empty() {
        c.problems.sort_by_key(|p| p.line);
        return Err(c.problems);
    }
    Ok(Release {
        service: raw.service.name.into_inner(),
        version: raw.service.version.into_inner(),
        container,
        health,
        update,
        placement,
        secrets,
    })
}
