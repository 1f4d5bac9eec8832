use super::*;

const DESIGN: &str = r#"[rollout.default]
waves = [
  { name = "canary", count = 1, select = 'labels.canary == "true"' },
  { name = "early", percent = 10 },
  { name = "all", percent = 100 },
]
bake = "10m"
healthy_for = "2m"
max_parallel = 50
failure_budget = 1
on_failure = "rollback"   # or "pause"

[[window]]
select = 'labels.tier == "T1"'
days = ["Tue", "Thu"]
hours = "08:00-16:00"
timezone = "Europe/Zurich"

[[exclude]]               # fleet-wide placement constraint: never place here
select = 'labels.retiring == "true"'
"#;

fn rejected(text: &str) -> Rejection {
    parse("grid.toml", text).unwrap_err()
}

#[test]
fn the_design_example_parses() {
    let file = parse("grid.toml", DESIGN).unwrap();
    let policy = &file.rollouts["default"];
    assert_eq!(policy.waves.len(), 3);
    assert_eq!(policy.waves[0].size, WaveSize::Count(1));
    assert_eq!(policy.waves[1].size, WaveSize::Percent(10));
    assert_eq!(policy.bake, Duration::from_secs(600));
    assert_eq!(policy.max_parallel, 50);
    assert_eq!(policy.failure_budget, 1);
    assert_eq!(policy.on_failure, OnFailure::Rollback);
    assert_eq!(file.windows.len(), 1);
    assert_eq!(file.excludes.len(), 1);
}

#[test]
fn bad_files_are_rejected_with_file_line_and_reason() {
    let syntax = rejected(&DESIGN.replace("bake = \"10m\"", "bake = \"10m"));
    assert_eq!((syntax.file.as_str(), syntax.line), ("grid.toml", 7));

    let unknown = rejected(&DESIGN.replace("max_parallel", "max_paralel"));
    assert_eq!(unknown.line, 9);
    assert!(unknown.reason.contains("max_paralel"), "{unknown:?}");

    let expression = rejected(&DESIGN.replace("labels.tier == \"T1\"", "labels.tier = = \"T1\""));
    assert_eq!(expression.line, 14);
    assert!(
        expression
            .reason
            .starts_with("window[0].select: the expression at 1:"),
        "{expression:?}"
    );

    let function =
        rejected(&DESIGN.replace("labels.retiring == \"true\"", "lower(labels.retiring)"));
    assert_eq!(function.line, 20);
    assert!(function.reason.contains("unknown function"), "{function:?}");

    let over = rejected(&DESIGN.replace("percent = 100", "percent = 150"));
    assert_eq!(over.line, 5);
    assert!(
        over.reason.contains("150 is not a share of the fleet"),
        "{over:?}"
    );

    let backwards = rejected(&DESIGN.replace("percent = 10 ", "percent = 50 ").replace(
        "percent = 100",
        "percent = 40 }, { name = \"x\", percent = 100",
    ));
    assert!(backwards.reason.contains("cumulative"), "{backwards:?}");

    let short = rejected(&DESIGN.replace("percent = 100", "percent = 90"));
    assert!(
        short.reason.contains("last wave must be percent = 100"),
        "{short:?}"
    );

    let zone = rejected(&DESIGN.replace("Europe/Zurich", "Mars/Olympus"));
    assert_eq!(zone.line, 17);

    let day = rejected(&DESIGN.replace("\"Thu\"", "\"Someday\""));
    assert!(day.reason.contains("\"Someday\" is not a day"), "{day:?}");
}

#[test]
fn windows_open_on_their_days_and_hours_in_their_time_zone() {
    let file = parse("w.toml", DESIGN).unwrap();
    let window = &file.windows[0];
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    // Tuesday 2026-11-24: 08:00 in Zurich is 07:00 UTC.
    assert!(window.open_at(at("2026-11-24T07:30:00Z")));
    assert!(!window.open_at(at("2026-11-24T06:59:00Z")));
    assert!(
        !window.open_at(at("2026-11-24T15:00:00Z")),
        "16:00 Zurich is closed"
    );
    assert!(
        !window.open_at(at("2026-11-25T10:00:00Z")),
        "Wednesday is closed"
    );

    let night = parse(
        "n.toml",
        "[[window]]\ndays = [\"Sat\"]\nhours = \"22:00-04:00\"\ntimezone = \"UTC\"\n",
    )
    .unwrap();
    let night = &night.windows[0];
    assert!(night.open_at(at("2026-11-28T23:00:00Z")), "Saturday night");
    assert!(
        night.open_at(at("2026-11-29T03:00:00Z")),
        "after midnight, still Saturday's window"
    );
    assert!(!night.open_at(at("2026-11-29T23:00:00Z")), "Sunday night");
}

#[test]
fn the_shipped_policies_parse() {
    for (name, text) in [
        (
            "default.toml",
            include_str!("../../../../policies/default.toml"),
        ),
        (
            "wlcg-tiered.toml",
            include_str!("../../../../policies/examples/wlcg-tiered.toml"),
        ),
        (
            "iot-fleet.toml",
            include_str!("../../../../policies/examples/iot-fleet.toml"),
        ),
    ] {
        let parsed = parse(name, text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(parsed.rollouts.len(), 1, "{name}");
    }
}
