use super::*;

const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn good() -> String {
    format!(
        r#"[service]
name = "xcache"
version = "1.4.2"

[container]
image = "registry.example.org/osg/xcache@sha256:{DIGEST}"
command = ["xrootd", "-c", "/etc/xcache.cfg"]
env = {{ CACHE_SIZE = "500G" }}
ports = ["1094:1094/tcp", "127.0.0.1:9000:9000"]
volumes = ["/srv/cache:/cache", "conf:/etc/xcache:ro"]
memory = "4GiB"
cpus = 2.0
restart = "always"

[health]
http = "http://127.0.0.1:1094/healthz"
interval = "5s"
timeout = "2s"
start_period = "30s"
healthy_after = 3

[update]
strategy = "stop-first"
healthy_within = "2m"

[placement]
require = 'labels.tier in ["T1", "T2"]'
rollout = "default"
"#
    )
}

fn problems(text: &str) -> Vec<Problem> {
    parse("app.toml", text, ImageSource::Registry)
        .unwrap_err()
        .problems
}

#[test]
fn the_design_example_parses() {
    let release = parse("app.toml", &good(), ImageSource::Registry).unwrap();
    assert_eq!(release.service, "xcache");
    assert_eq!(release.container.memory, Some(4 << 30));
    assert_eq!(
        release.container.ports[1].host_ip.as_deref(),
        Some("127.0.0.1")
    );
    assert!(release.container.volumes[1].read_only);
    assert_eq!(
        release.health.check,
        HealthCheck::Http("http://127.0.0.1:1094/healthz".into())
    );
    assert_eq!(release.health.healthy_after, 3);
    assert_eq!(release.update.strategy, Strategy::StopFirst);
    assert_eq!(release.placement.rollout, "default");
    assert_eq!(
        target_name(&release.service, &release.version),
        "releases/xcache/1.4.2.toml"
    );
}

#[test]
fn syntax_errors_give_line_and_field() {
    let text = good().replace("cpus = 2.0", "cpus = 2.0.0");
    let p = problems(&text);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].line, 12);
    assert_eq!(p[0].field, "container.cpus");
}

#[test]
fn unknown_fields_are_named() {
    let text = good().replace(
        "restart = \"always\"",
        "restart = \"always\"\ncolour = \"blue\"",
    );
    let p = problems(&text);
    assert_eq!((p[0].line, p[0].field.as_str()), (14, "container.colour"));
    assert!(p[0].message.contains("unknown field"), "{:?}", p[0]);
}

#[test]
fn wrong_types_are_named() {
    let text = good().replace("cpus = 2.0", "cpus = \"two\"");
    let p = problems(&text);
    assert_eq!((p[0].line, p[0].field.as_str()), (12, "container.cpus"));
    assert!(p[0].message.contains("invalid type"), "{:?}", p[0]);
}

#[test]
fn a_missing_health_check_is_reported() {
    let text = good();
    let start = text.find("[health]").unwrap();
    let end = text.find("[update]").unwrap();
    let text = format!("{}{}", &text[..start], &text[end..]);
    let p = problems(&text);
    assert!(
        p.iter()
            .any(|p| p.field == "health" && p.message.contains("required")),
        "{p:?}"
    );
}

#[test]
fn an_image_neither_pinned_nor_shipped_is_refused_but_an_archive_is_fine() {
    let text = good().replace(&format!("@sha256:{DIGEST}"), ":latest");
    let p = problems(&text);
    assert_eq!((p[0].line, p[0].field.as_str()), (6, "container.image"));
    assert!(p[0].message.contains("pinned by digest"), "{:?}", p[0]);
    assert!(parse("app.toml", &text, ImageSource::Archive).is_ok());
}

#[test]
fn every_problem_is_reported_at_once_in_line_order() {
    let text = good()
        .replace("name = \"xcache\"", "name = \"XCache!\"")
        .replace("\"1094:1094/tcp\"", "\"99999:1/tcp\"")
        .replace("memory = \"4GiB\"", "memory = \"lots\"")
        .replace("strategy = \"stop-first\"", "strategy = \"yolo\"");
    let p = problems(&text);
    let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "service.name",
            "container.ports",
            "container.memory",
            "update.strategy"
        ]
    );
    let shown = ManifestError {
        file: "app.toml".into(),
        problems: p,
    }
    .to_string();
    assert!(shown.contains("app.toml:2: service.name:"), "{shown}");
}

#[test]
fn two_health_checks_and_a_short_deadline_are_refused() {
    let text = good().replace(
        "interval = \"5s\"",
        "tcp = \"127.0.0.1:1094\"\ninterval = \"5s\"",
    );
    assert!(
        problems(&text)
            .iter()
            .any(|p| p.message.contains("exactly one"))
    );
    let text = good().replace("healthy_within = \"2m\"", "healthy_within = \"10s\"");
    assert!(
        problems(&text)
            .iter()
            .any(|p| p.field == "update.healthy_within")
    );
}

#[test]
fn oversized_manifests_are_refused() {
    let text = format!("{}\n# {}", good(), "x".repeat(MAX_MANIFEST));
    assert!(problems(&text)[0].message.contains("at most"));
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = parse("fuzz.toml", &text, ImageSource::Registry);
    }

    #[test]
    fn edits_of_a_good_manifest_never_panic(cut in 0usize..900, insert in ".{0,12}") {
        let mut text = good();
        let at = cut.min(text.len());
        if text.is_char_boundary(at) {
            text.insert_str(at, &insert);
            let _ = parse("fuzz.toml", &text, ImageSource::Registry);
        }
    }
}

#[test]
fn start_first_with_host_ports_is_refused_at_the_strategy() {
    let text = good().replace("stop-first", "start-first");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "update.strategy");
    assert!(
        found[0].message.contains("side by side"),
        "{}",
        found[0].message
    );
    assert_eq!(found[0].line, 23);
}

#[test]
fn https_health_checks_are_refused_with_a_way_out() {
    let text = good().replace(
        "http://127.0.0.1:1094/healthz",
        "https://127.0.0.1:1094/healthz",
    );
    let found = problems(&text);
    assert_eq!(found[0].field, "health.http");
    assert!(found[0].message.contains("use tcp"), "{}", found[0].message);
}

#[test]
fn the_agent_service_name_is_reserved() {
    let text = good().replacen("name = \"xcache\"", "name = \"continuum-agent\"", 1);
    assert_ne!(text, good(), "the example names its service xcache");
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.field == "service.name" && p.message.contains("reserved")),
        "{found:?}"
    );
}

#[test]
fn agent_binary_target_names_round_trip_and_odd_ones_are_refused() {
    let name = agent_target_name("2.1.0", "x86_64-unknown-linux-gnu");
    assert_eq!(
        name,
        "agents/continuum-agent/2.1.0/x86_64-unknown-linux-gnu"
    );
    assert_eq!(
        parse_agent_target_name(&name),
        Some(("2.1.0", "x86_64-unknown-linux-gnu"))
    );
    for odd in [
        "agents/continuum-agent/2.1.0",
        "agents/other/2.1.0/x86_64-unknown-linux-gnu",
        "agents/continuum-agent/../x86_64-unknown-linux-gnu",
        "agents/continuum-agent/2.1.0/x86_64/../../etc",
        "agents/continuum-agent/2.1.0/X86",
        "releases/continuum-agent/2.1.0.toml",
    ] {
        assert_eq!(parse_agent_target_name(odd), None, "{odd}");
    }
}

#[test]
fn secrets_are_files_at_distinct_paths_with_a_default_under_run_secrets() {
    let text = format!(
        "{}\n[[secrets]]\nname = \"db-password\"\n\n[[secrets]]\nname = \"tls-key\"\npath = \"/etc/app/key.pem\"\n",
        good().replace(
            "restart = \"always\"",
            "restart = \"always\"\nregistry_secret = \"pull-login\""
        )
    );
    let release = parse("app.toml", &text, ImageSource::Registry).unwrap();
    let files: Vec<(&str, &str)> = release
        .secrets
        .iter()
        .map(|s| (s.name.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        files,
        [
            ("db-password", "/run/secrets/db-password"),
            ("tls-key", "/etc/app/key.pem")
        ]
    );
    assert_eq!(
        release.container.registry_secret.as_deref(),
        Some("pull-login")
    );
    let names: Vec<&str> = release.secret_names().collect();
    assert_eq!(names, ["db-password", "tls-key", "pull-login"]);
}

#[test]
fn bad_secrets_are_reported_with_line_and_field() {
    let text = format!(
        "{}\n[[secrets]]\nname = \"Bad Name\"\n\n[[secrets]]\nname = \"a\"\npath = \"relative/x\"\n\n[[secrets]]\nname = \"b\"\npath = \"/cache\"\n\n[[secrets]]\nname = \"c\"\npath = \"/x/../etc/shadow\"\n",
        good().replace(
            "restart = \"always\"",
            "restart = \"always\"\nregistry_secret = \"NOPE\""
        )
    );
    let p = problems(&text);
    let fields: Vec<(usize, &str)> = p.iter().map(|p| (p.line, p.field.as_str())).collect();
    let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(
        fields,
        [
            (line("registry_secret"), "container.registry_secret"),
            (line("Bad Name"), "secrets.name"),
            (line("relative/x"), "secrets.path"),
            (line("\"/cache\""), "secrets.path"),
            (line("shadow"), "secrets.path"),
        ],
        "{p:?}"
    );
}
