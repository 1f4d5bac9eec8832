//! The manifest as written, with the position of every value, before checking.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::Problem;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub service: Service,
    pub container: Container,
    pub health: Option<Health>,
    pub update: Option<Update>,
    pub placement: Option<Placement>,
    pub secrets: Option<Vec<Secret>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    pub name: Spanned<String>,
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: Spanned<String>,
    pub version: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub image: Spanned<String>,
    pub command: Option<Spanned<Vec<String>>>,
    pub env: Option<Spanned<BTreeMap<String, String>>>,
    pub ports: Option<Vec<Spanned<String>>>,
    pub volumes: Option<Vec<Spanned<String>>>,
    pub memory: Option<Spanned<String>>,
    pub cpus: Option<Spanned<f64>>,
    pub restart: Option<Spanned<String>>,
    pub privileged: Option<Spanned<bool>>,
    pub network: Option<Spanned<String>>,
    pub registry_secret: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub http: Option<Spanned<String>>,
    pub tcp: Option<Spanned<String>>,
    pub exec: Option<Spanned<Vec<String>>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub start_period: Option<Spanned<String>>,
    pub healthy_after: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    pub strategy: Option<Spanned<String>>,
    pub healthy_within: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub require: Option<Spanned<String>>,
    pub rollout: Option<Spanned<String>>,
}

/// The 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The dotted field at a byte offset: the nearest `[table]` header above it and the key
/// on its line, if any.
pub fn field_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    if line.starts_with('[') {
        return line
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_owned();
    }
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.contains(' '));
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k.to_owned(),
        (Some(t), None) => t,
        (None, None) => "-".to_owned(),
    }
}

/// Turns a parse or shape error from the TOML reader into a problem with line and field.
pub fn syntax_problem(text: &str, error: &toml::de::Error) -> Problem {
    let message = error.message().trim().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let mut field = field_at(text, span.start);
            // "missing field `x`" points at the table that lacks it.
            if let Some(missing) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
            {
                field = if field == "-" {
                    missing.to_owned()
                } else {
                    format!("{field}.{missing}")
                };
            }
            Problem {
                line: line_of(text, span.start),
                field,
                message,
            }
        }
        None => Problem {
            line: 1,
            field: "-".into(),
            message,
        },
    }
}
