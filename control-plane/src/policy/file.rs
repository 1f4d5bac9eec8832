//! One policy file: rollout strategies, maintenance windows and fleet-wide exclusions.
//!
//! ```toml
//! [rollout.default]
//! waves = [
//!   { name = "canary", count = 1, select = 'labels.canary == "true"' },
//!   { name = "early", percent = 10 },
//!   { name = "all", percent = 100 },      # percents are cumulative shares of eligible sites
//! ]
//! bake = "10m"              # wait after a wave is healthy before the next one
//! healthy_for = "2m"        # a site counts as done once healthy this long
//! max_parallel = 50         # sites updating at once
//! failure_budget = 1        # failed sites tolerated over the whole rollout
//! on_failure = "rollback"   # or "pause", when the budget is spent
//!
//! [[window]]                # sites selected here update only inside the window
//! select = 'labels.tier == "T1"'
//! days = ["Tue", "Thu"]
//! hours = "08:00-16:00"     # an end before the start runs past midnight
//! timezone = "Europe/Zurich"
//!
//! [[exclude]]               # never place anything on these sites
//! select = 'labels.retiring == "true"'
//! reason = "being decommissioned"
//! ```
//!
//! Every problem is reported with the file, line and field; the last wave must reach
//! 100 % so that a rollout ends with every eligible site on the release.

use std::collections::BTreeMap;
use std::time::Duration;

use continuum_shared::manifest::units::parse_duration;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::selector::Selector;

/// A rollout strategy.
#[derive(Debug)]
pub struct RolloutPolicy {
    /// Its name, as releases and `rollout start --policy` name it.
    pub name: String,
    /// The file it came from.
    pub file: String,
    /// Waves, in order.
    pub waves: Vec<Wave>,
    /// Wait after a wave is healthy before the next one starts.
    pub bake: Duration,
    /// How long a site must stay healthy to count as done.
    pub healthy_for: Duration,
    /// Most sites updating at once.
    pub max_parallel: u32,
    /// Failed sites tolerated over the whole rollout.
    pub failure_budget: u32,
    /// What happens when the budget is spent.
    pub on_failure: OnFailure,
}

/// One wave of a rollout.
#[derive(Debug)]
pub struct Wave {
    /// Its name.
    pub name: String,
    /// How many sites it covers.
    pub size: WaveSize,
    /// Only sites this selects may be in it.
    pub select: Option<Selector>,
}

/// How large a wave is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaveSize {
    /// This many sites.
    Count(u32),
    /// Up to this cumulative share (percent) of the eligible sites.
    Percent(u8),
}

/// What a rollout does when its failure budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Stop and wait for an operator.
    Pause,
    /// Move every site already updated back to the previous release.
    Rollback,
}

/// A maintenance window: when the sites it selects may be updated.
#[derive(Debug)]
pub struct Window {
    /// The file it came from.
    pub file: String,
    /// Which sites it applies to (all when absent).
    pub select: Option<Selector>,
    /// Days of the week it is open.
    pub days: Vec<jiff::civil::Weekday>,
    /// Opening time, minutes after midnight.
    pub start: u16,
    /// Closing time, minutes after midnight (before `start`: past midnight).
    pub end: u16,
    /// The time zone `days` and `hours` are in.
    pub timezone: jiff::tz::TimeZone,
    /// As written, for display.
    pub text: String,
}

/// A fleet-wide exclusion.
#[derive(Debug)]
pub struct Exclusion {
    /// The file it came from.
    pub file: String,
    /// Which sites it excludes.
    pub select: Selector,
    /// Why, for people.
    pub reason: Option<String>,
}

/// Everything one file says.
#[derive(Debug, Default)]
pub struct PolicyFile {
    /// Rollout strategies by name.
    pub rollouts: BTreeMap<String, RolloutPolicy>,
    /// Maintenance windows.
    pub windows: Vec<Window>,
    /// Exclusions.
    pub excludes: Vec<Exclusion>,
}

/// Why a file was rejected: the first problem, with its line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rejection {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    rollout: BTreeMap<String, RawRollout>,
    #[serde(default)]
    window: Vec<RawWindow>,
    #[serde(default)]
    exclude: Vec<RawExclude>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    waves: Spanned<Vec<RawWave>>,
    bake: Option<Spanned<String>>,
    healthy_for: Option<Spanned<String>>,
    max_parallel: Option<Spanned<i64>>,
    failure_budget: Option<Spanned<i64>>,
    on_failure: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    name: Spanned<String>,
    count: Option<Spanned<i64>>,
    percent: Option<Spanned<i64>>,
    select: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    select: Option<Spanned<String>>,
    days: Spanned<Vec<String>>,
    hours: Spanned<String>,
    timezone: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExclude {
    select: Spanned<String>,
    reason: Option<String>,
}

/// Parses and checks one policy file.
pub fn parse(file: &str, text: &str) -> Result<PolicyFile, Rejection> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let reject = |offset: usize, reason: String| Rejection {
        file: file.to_owned(),
        line: line_of(offset),
        reason,
    };
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        reject(offset, e.message().trim().to_owned())
    })?;
    let selector = |field: &str, value: &Spanned<String>| {
        Selector::compile(value.get_ref())
            .map_err(|e| reject(value.span().start, format!("{field}: the expression {e}")))
    };
    let duration = |field: &str, value: &Option<Spanned<String>>, default: Duration| match value {
        None => Ok(default),
        Some(v) => {
            parse_duration(v.get_ref()).map_err(|e| reject(v.span().start, format!("{field}: {e}")))
        }
    };
    let mut parsed = PolicyFile::default();
    for (name, r) in raw.rollout {
        let field = |f: &str| format!("rollout.{name}.{f}");
        if continuum_shared::names::check_name("policy", &name).is_err() {
            return Err(reject(
                text.find(&format!("rollout.{name}")).unwrap_or(0),
                format!("rollout.{name}: a policy name is lower-case letters, digits and -"),
            ));
        }
        let mut waves = Vec::new();
        let mut last_percent = 0;
        for (i, w) in r.waves.get_ref().iter().enumerate() {
            let at = w.name.span().start;
            let wave_field = format!("{}[{i}]", field("waves"));
            let size = match (&w.count, &w.percent) {
                (Some(c), None) if (1..=100_000).contains(c.get_ref()) => {
                    WaveSize::Count(*c.get_ref() as u32)
                }
                (Some(c), None) => {
                    return Err(reject(
                        c.span().start,
                        format!("{wave_field}.count: 1 or more sites"),
                    ));
                }
                (None, Some(p)) if (1..=100).contains(p.get_ref()) => {
                    let p = *p.get_ref() as u8;
                    if p < last_percent {
                        return Err(reject(
                            at,
                            format!(
                                "{wave_field}.percent: percents are cumulative, so {p} cannot follow {last_percent}"
                            ),
                        ));
                    }
                    last_percent = p;
                    WaveSize::Percent(p)
                }
                (None, Some(p)) => {
                    return Err(reject(
                        p.span().start,
                        format!(
                            "{wave_field}.percent: {} is not a share of the fleet (1 to 100)",
                            p.get_ref()
                        ),
                    ));
                }
                _ => {
                    return Err(reject(
                        at,
                        format!("{wave_field}: give exactly one of count or percent"),
                    ));
                }
            };
            let select = match &w.select {
                Some(s) => Some(selector(&format!("{wave_field}.select"), s)?),
                None => None,
            };
            waves.push(Wave {
                name: w.name.get_ref().clone(),
                size,
                select,
            });
        }
        match waves.last() {
            Some(Wave {
                size: WaveSize::Percent(100),
                select: None,
                ..
            }) => {}
            _ => {
                return Err(reject(
                    r.waves.span().start,
                    format!(
                        "{}: the last wave must be percent = 100 with no select, so that every eligible site is reached",
                        field("waves")
                    ),
                ));
            }
        }
        let bounded = |value: &Option<Spanned<i64>>, f: &str, min: i64, default: u32| match value {
            None => Ok(default),
            Some(v) if *v.get_ref() >= min && *v.get_ref() <= i64::from(u32::MAX) => {
                Ok(*v.get_ref() as u32)
            }
            Some(v) => Err(reject(
                v.span().start,
                format!("{}: at least {min}", field(f)),
            )),
        };
        let on_failure = match r.on_failure.as_ref().map(|o| (o, o.get_ref().as_str())) {
            None | Some((_, "pause")) => OnFailure::Pause,
            Some((_, "rollback")) => OnFailure::Rollback,
            Some((o, other)) => {
                return Err(reject(
                    o.span().start,
                    format!("{}: {other:?}: use pause or rollback", field("on_failure")),
                ));
            }
        };
        let policy = RolloutPolicy {
            name: name.clone(),
            file: file.to_owned(),
            waves,
            bake: duration(&field("bake"), &r.bake, Duration::from_secs(600))?,
            healthy_for: duration(
                &field("healthy_for"),
                &r.healthy_for,
                Duration::from_secs(120),
            )?,
            max_parallel: bounded(&r.max_parallel, "max_parallel", 1, 50)?,
            failure_budget: bounded(&r.failure_budget, "failure_budget", 0, 0)?,
            on_failure,
        };
        parsed.rollouts.insert(name, policy);
    }
    for (i, w) in raw.window.iter().enumerate() {
        let field = format!("window[{i}]");
        let select = match &w.select {
            Some(s) => Some(selector(&format!("{field}.select"), s)?),
            None => None,
        };
        let mut days = Vec::new();
        for day in w.days.get_ref() {
            days.push(weekday(day).ok_or_else(|| {
                reject(
                    w.days.span().start,
                    format!(
                        "{field}.days: {day:?} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"
                    ),
                )
            })?);
        }
        if days.is_empty() {
            return Err(reject(
                w.days.span().start,
                format!("{field}.days: name at least one day"),
            ));
        }
        let (start, end) = hours(w.hours.get_ref()).ok_or_else(|| {
            reject(
                w.hours.span().start,
                format!("{field}.hours: {:?} is not HH:MM-HH:MM", w.hours.get_ref()),
            )
        })?;
        let timezone = jiff::tz::TimeZone::get(w.timezone.get_ref()).map_err(|_| {
            reject(
                w.timezone.span().start,
                format!(
                    "{field}.timezone: {:?} is not a known time zone (like Europe/Zurich or UTC)",
                    w.timezone.get_ref()
                ),
            )
        })?;
        parsed.windows.push(Window {
            file: file.to_owned(),
            select,
            days,
            start,
            end,
            timezone,
            text: format!(
                "{} {} {}",
                w.days.get_ref().join(","),
                w.hours.get_ref(),
                w.timezone.get_ref()
            ),
        });
    }
    for (i, x) in raw.exclude.iter().enumerate() {
        parsed.excludes.push(Exclusion {
            file: file.to_owned(),
            select: selector(&format!("exclude[{i}].select"), &x.select)?,
            reason: x.reason.clone(),
        });
    }
    Ok(parsed)
}

fn weekday(text: &str) -> Option<jiff::civil::Weekday> {
    use jiff::civil::Weekday::*;
    Some(match text.to_ascii_lowercase().get(..3)? {
        "mon" => Monday,
        "tue" => Tuesday,
        "wed" => Wednesday,
        "thu" => Thursday,
        "fri" => Friday,
        "sat" => Saturday,
        "sun" => Sunday,
        _ => return None,
    })
}

fn hours(text: &str) -> Option<(u16, u16)> {
    let minutes = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m) = (h.parse::<u16>().ok()?, m.parse::<u16>().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
    };
    let (a, b) = text.split_once('-')?;
    let (start, end) = (minutes(a)?, minutes(b)?);
    (start != end).then_some((start, end))
}

impl Window {
    /// Whether the window is open at `now`.
    pub fn open_at(&self, now: jiff::Timestamp) -> bool {
        let local = now.to_zoned(self.timezone.clone());
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let today = local.weekday();
        if self.start < self.end {
            self.days.contains(&today) && (self.start..self.end).contains(&minute)
        } else {
            // Past midnight: the part after midnight belongs to the previous day's window.
            let yesterday = today.previous();
            (self.days.contains(&today) && minute >= self.start)
                || (self.days.contains(&yesterday) && minute < self.end)
        }
    }
}

#[cfg(test)]
mod tests;
