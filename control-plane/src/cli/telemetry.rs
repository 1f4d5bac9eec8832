//! `continuum events` and `continuum logs`: what happened across the fleet, and a
//! service's output streamed live from its site.

use std::io::Write as _;

use super::Output;
use super::output::{or_dash, print, table};
use crate::api::telemetry::SiteTelemetryView;
use crate::client::ApiClient;
use crate::telemetry::event::EventView;

/// How long each follow request waits for news (the server caps it at 30 s).
const FOLLOW_WAIT_SECS: u64 = 25;
/// Events asked for per request while following.
const FOLLOW_BATCH: usize = 500;

/// What `continuum events` shows.
pub struct EventsFilter {
    /// Only this site's.
    pub site: Option<String>,
    /// Only this service's.
    pub service: Option<String>,
    /// How many of the newest to start with.
    pub limit: usize,
    /// Keep printing new events as they arrive.
    pub follow: bool,
}

fn query(filter: &EventsFilter) -> anyhow::Result<String> {
    let mut query = String::new();
    for (key, value) in [("site", &filter.site), ("service", &filter.service)] {
        if let Some(value) = value {
            continuum_shared::names::check_name(key, value)?;
            query.push_str(&format!("&{key}={value}"));
        }
    }
    Ok(query)
}

fn row(event: &EventView) -> Vec<String> {
    vec![
        event.at.clone(),
        event.site.clone(),
        event.kind.clone(),
        or_dash(event.service.as_ref()),
        or_dash(event.release.as_ref()),
        event.message.replace('\n', " ⏎ "),
    ]
}

const HEADERS: [&str; 6] = ["TIME", "SITE", "KIND", "SERVICE", "RELEASE", "MESSAGE"];

/// Lists (and with `follow`, keeps listing) events.
pub async fn events(api: &ApiClient, out: Output, filter: EventsFilter) -> anyhow::Result<()> {
    let query = query(&filter)?;
    let first: Vec<EventView> = api
        .get(&format!("/v1/events?limit={}{query}", filter.limit.max(1)))
        .await?;
    if !filter.follow {
        print(out, &first, &HEADERS, first.iter().map(row).collect());
        return Ok(());
    }
    let mut after = first.last().map_or(0, |e| e.id);
    emit(out, &first, true);
    loop {
        let next: Vec<EventView> = api
            .get(&format!(
                "/v1/events?after={after}&limit={FOLLOW_BATCH}&wait={FOLLOW_WAIT_SECS}{query}"
            ))
            .await?;
        if let Some(last) = next.last() {
            after = last.id;
        }
        emit(out, &next, false);
    }
}

/// Prints events as they come: JSON lines, or table rows (with headers first).
fn emit(out: Output, events: &[EventView], headers: bool) {
    let mut stdout = std::io::stdout().lock();
    match out {
        Output::Json => {
            for event in events {
                let _ = writeln!(
                    stdout,
                    "{}",
                    serde_json::to_string(event).unwrap_or_default()
                );
            }
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = events.iter().map(row).collect();
            let text = table(&HEADERS, &rows);
            let text = if headers {
                text.as_str()
            } else {
                text.split_once('\n').map_or("", |(_, rest)| rest)
            };
            let _ = write!(stdout, "{text}");
        }
    }
    let _ = stdout.flush();
}

/// Shows a site's newest metrics and telemetry counts.
pub async fn site(api: &ApiClient, out: Output, name: &str) -> anyhow::Result<()> {
    let view: SiteTelemetryView = api.get(&format!("/v1/sites/{name}/telemetry")).await?;
    let mut rows: Vec<Vec<String>> = view
        .host
        .iter()
        .map(|(metric, value)| vec!["-".to_owned(), metric.clone(), format_value(*value)])
        .collect();
    for (service, metrics) in &view.services {
        for (metric, value) in metrics {
            rows.push(vec![service.clone(), metric.clone(), format_value(*value)]);
        }
    }
    print(out, &view, &["SERVICE", "METRIC", "VALUE"], rows);
    if out == Output::Table {
        println!(
            "\nsampled {}; since the control plane started: {} samples, {} events, {} records dropped by the agent, {} lost",
            or_dash(view.at.as_ref()),
            view.samples,
            view.events,
            view.dropped,
            view.lost
        );
    }
    Ok(())
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

/// Streams a service's container output from its site to standard output.
pub async fn logs(
    api: &ApiClient,
    site: &str,
    service: &str,
    tail: u32,
    follow: bool,
) -> anyhow::Result<()> {
    continuum_shared::names::check_name("site", site)?;
    continuum_shared::names::check_name("service", service)?;
    let path = format!("/v1/sites/{site}/services/{service}/logs?tail={tail}&follow={follow}");
    api.get_streamed(&path, |chunk| {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(chunk);
        let _ = stdout.flush();
    })
    .await?;
    Ok(())
}
