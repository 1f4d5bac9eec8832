//! Rollout policies: loaded from the policies directory, reloaded when it changes, a bad
//! file rejected with file, line and reason while its last good version stays in force;
//! placement expressions checked when a release is published.

use std::time::Duration;

use continuum_tests::releases::{manifest, write};
use continuum_tests::server::Server;
use continuum_tests::wait;
use serde_json::Value;

const GRID: &str = include_str!("../../../policies/examples/wlcg-tiered.toml");

fn policies(server: &Server) -> Value {
    server.json(&["policies"])
}

fn rollouts(view: &Value) -> Vec<String> {
    view["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the policies in force satisfy `check`.
fn until(server: &Server, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait::until(Duration::from_secs(20), what, || {
        Some(policies(server)).filter(|v| check(v))
    })
}

#[test]
fn policy_files_reload_and_a_bad_edit_keeps_the_last_good_version() {
    let server = Server::start();
    let dir = server.data_dir().join("policies");
    let first = policies(&server);
    assert_eq!(rollouts(&first), ["default"], "{first}");
    assert!(first["rejected"].as_array().unwrap().is_empty());

    std::fs::write(dir.join("grid.toml"), GRID).unwrap();
    let loaded = until(&server, "the grid policy", |v| {
        rollouts(v).contains(&"grid".into())
    });
    assert_eq!(
        loaded["excludes"][0]["reason"],
        "site is being decommissioned"
    );
    assert_eq!(
        loaded["windows"][0]["when"],
        "Mon,Tue,Wed,Thu 08:00-16:00 Europe/Zurich"
    );

    for (what, text, line, reason) in [
        (
            "a syntax error",
            GRID.replace("bake = \"30m\"", "bake = \"30m"),
            12,
            "",
        ),
        (
            "an unknown field",
            GRID.replace("max_parallel", "max_paralel"),
            14,
            "max_paralel",
        ),
        (
            "an expression that does not parse",
            GRID.replace(
                "labels.retiring == \"true\"",
                "labels.retiring = = \"true\"",
            ),
            26,
            "exclude[0].select: the expression at 1:",
        ),
        (
            "a wave over 100 %",
            GRID.replace("percent = 100", "percent = 120"),
            10,
            "120 is not a share",
        ),
    ] {
        std::fs::write(dir.join("grid.toml"), text).unwrap();
        let view = until(&server, what, |v| {
            v["rejected"].as_array().unwrap().iter().any(|r| {
                r["file"] == "grid.toml"
                    && r["line"] == line
                    && r["reason"].as_str().unwrap().contains(reason)
            })
        });
        assert!(
            rollouts(&view).contains(&"grid".into()),
            "{what}: the last good grid stays in force"
        );
        assert_eq!(view["excludes"].as_array().unwrap().len(), 1, "{what}");
        let shown = server.cli(&["policies"]).ok().stdout;
        assert!(
            shown.contains(&format!("REJECTED grid.toml:{line}:")),
            "{what}: {shown}"
        );
    }

    std::fs::remove_file(dir.join("grid.toml")).unwrap();
    until(&server, "the grid policy gone", |v| {
        rollouts(v) == ["default"]
    });
}

#[test]
fn a_placement_expression_that_does_not_parse_is_refused_at_publish() {
    let server = Server::start();
    let text = manifest("web", "1.0.0")
        + "\n[placement]\nrequire = 'labels.tier == \"T1\" && size(labels) > 2'\n";
    let file = write(server.root(), "web.toml", &text);
    let out = server.cli(&["release", "publish", file.to_str().unwrap()]);
    assert_ne!(out.code, 0);
    let line = text.lines().position(|l| l.starts_with("require")).unwrap() + 1;
    assert!(
        out.stderr.contains(&format!(
            "web.toml:{line}: placement.require: the expression at 1:24: unknown function \"size\""
        )),
        "{}",
        out.stderr
    );
}
