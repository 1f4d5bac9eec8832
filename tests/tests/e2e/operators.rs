//! Operators, roles, the audit log, and the API's credentials and description.

use std::process::Command;

use continuum_tests::server::{CliOutput, Server};

#[test]
fn roles_decide_who_may_write_and_every_write_is_audited() {
    let server = Server::start();
    let viewer = server.json(&["operator", "create", "vera", "--role", "viewer"])["credential"]
        .as_str()
        .unwrap()
        .to_owned();
    let operator = server.json(&["operator", "create", "otto", "--role", "operator"])["credential"]
        .as_str()
        .unwrap()
        .to_owned();

    // A viewer reads but may not write.
    server.cli_as(&viewer, &["sites"]).ok();
    let denied = server.cli_as(&viewer, &["token", "create", "--name", "sneaky"]);
    assert_ne!(denied.code, 0);
    assert!(
        denied.stderr.contains("needs the operator role"),
        "{}",
        denied.stderr
    );
    let denied = server.cli_as(
        &operator,
        &["operator", "create", "mallory", "--role", "admin"],
    );
    assert!(
        denied.stderr.contains("needs the admin role"),
        "{}",
        denied.stderr
    );
    // An operator may create tokens.
    server
        .cli_as(&operator, &["token", "create", "--name", "legit"])
        .ok();
    let me = server.json(&["whoami", "--token", &operator]);
    assert_eq!(me["role"], "operator");

    let audit = server.json(&["audit"]);
    let entries = audit.as_array().unwrap();
    let find = |actor: &str, action: &str, target: &str| {
        entries
            .iter()
            .find(|e| e["actor"] == actor && e["action"] == action && e["target"] == target)
            .unwrap_or_else(|| panic!("no audit entry for {actor} {action} {target}: {audit}"))
    };
    let refused = find("vera", "token.create", "sneaky");
    assert_eq!(refused["outcome"], "denied");
    assert_eq!(refused["from"], "127.0.0.1");
    assert!(refused["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        find("otto", "operator.create", "mallory")["outcome"],
        "denied"
    );
    assert_eq!(find("admin", "operator.create", "vera")["outcome"], "ok");
    assert_eq!(find("otto", "token.create", "legit")["outcome"], "ok");
    // Credentials never appear in the audit log or operator listings.
    let listing = server.cli(&["operator", "list", "-o", "json"]).ok().stdout;
    for secret in [&viewer, &operator, &server.admin] {
        assert!(!audit.to_string().contains(secret.as_str()) && !listing.contains(secret.as_str()));
    }
    // Viewers cannot read the audit log or the token list.
    assert_ne!(server.cli_as(&viewer, &["audit"]).code, 0);
}

fn curl(server: &Server, args: &[&str]) -> CliOutput {
    let ca = server.data_dir().join("ca.crt");
    let output = CliOutput::of(
        Command::new("curl")
            .args([
                "-sS",
                "--cacert",
                ca.to_str().unwrap(),
                "-w",
                "\n%{http_code}",
            ])
            .args(args),
    );
    assert!(
        output.stderr.is_empty(),
        "curl failed (is curl installed?): {}",
        output.stderr
    );
    output
}

#[test]
fn the_api_needs_a_credential_and_describes_itself() {
    let server = Server::start();
    let sites = format!("{}/v1/sites", server.api);
    let anonymous = curl(&server, &[&sites]);
    assert!(anonymous.stdout.ends_with("401"), "{}", anonymous.stdout);
    assert!(
        anonymous.stdout.contains("Authorization: Bearer"),
        "{}",
        anonymous.stdout
    );
    let wrong = curl(&server, &["-H", "Authorization: Bearer ctn_nope", &sites]);
    assert!(
        wrong.stdout.ends_with("401") && wrong.stdout.contains("not recognised"),
        "{}",
        wrong.stdout
    );
    let right = curl(
        &server,
        &[
            "-H",
            &format!("Authorization: Bearer {}", server.admin),
            &sites,
        ],
    );
    assert!(right.stdout.ends_with("200"), "{}", right.stdout);

    let spec = curl(&server, &[&format!("{}/openapi.json", server.api)]);
    let body = spec.stdout.rsplit_once('\n').unwrap().0;
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/v1/sites/{name}/revoke"]["post"].is_object());

    let bad_cli = server.cli(&["--token", "ctn_nope", "sites"]);
    assert_ne!(bad_cli.code, 0);
    assert!(
        bad_cli.stderr.contains("not recognised"),
        "{}",
        bad_cli.stderr
    );
    let nowhere = Command::new(continuum_tests::bins::binary("continuum"))
        .current_dir(std::env::temp_dir())
        .env("HOME", server.root().join("nohome"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("CONTINUUM_SERVER")
        .env_remove("CONTINUUM_TOKEN")
        .arg("sites")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("no control plane configured"));
}
