//! Site labels: text given by operators, plus facts an agent detects about its host.
//!
//! Numeric facts (cpus, memory in bytes) stay numbers so that placement can compare
//! them. In JSON a label is a plain string or number; on the wire (a format that is not
//! self-describing) it is a tagged value.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// All labels of a site, sorted by key.
pub type Labels = BTreeMap<String, LabelValue>;

/// Labels whose values are numbers; protocol version 1 sent them as strings.
pub const NUMERIC_FACTS: &[&str] = &["cpus", "memory"];

/// One label value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LabelValue {
    /// Free text.
    Text(String),
    /// A whole number (counts, bytes).
    Int(i64),
}

impl LabelValue {
    /// Reads a value sent as a string by a version-1 agent: known numeric facts that
    /// parse as numbers become numbers, everything else stays text.
    pub fn from_legacy(key: &str, value: String) -> Self {
        if NUMERIC_FACTS.contains(&key)
            && let Ok(n) = value.parse::<i64>()
        {
            return LabelValue::Int(n);
        }
        LabelValue::Text(value)
    }

    /// The value as text, if it is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            LabelValue::Text(s) => Some(s),
            LabelValue::Int(_) => None,
        }
    }

    /// The value as a number, if it is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            LabelValue::Int(n) => Some(*n),
            LabelValue::Text(_) => None,
        }
    }
}

impl fmt::Display for LabelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelValue::Text(s) => f.write_str(s),
            LabelValue::Int(n) => write!(f, "{n}"),
        }
    }
}

impl From<&str> for LabelValue {
    fn from(value: &str) -> Self {
        LabelValue::Text(value.to_owned())
    }
}

impl From<i64> for LabelValue {
    fn from(value: i64) -> Self {
        LabelValue::Int(value)
    }
}

/// The tagged form used by formats that are not self-describing.
#[derive(Serialize, Deserialize)]
enum Tagged {
    Text(String),
    Int(i64),
}

impl Serialize for LabelValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            match self {
                LabelValue::Text(s) => serializer.serialize_str(s),
                LabelValue::Int(n) => serializer.serialize_i64(*n),
            }
        } else {
            match self {
                LabelValue::Text(s) => Tagged::Text(s.clone()),
                LabelValue::Int(n) => Tagged::Int(*n),
            }
            .serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for LabelValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(PlainVisitor)
        } else {
            Ok(match Tagged::deserialize(deserializer)? {
                Tagged::Text(s) => LabelValue::Text(s),
                Tagged::Int(n) => LabelValue::Int(n),
            })
        }
    }
}

struct PlainVisitor;

impl Visitor<'_> for PlainVisitor {
    type Value = LabelValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a whole number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<LabelValue, E> {
        Ok(LabelValue::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<LabelValue, E> {
        Ok(LabelValue::Text(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<LabelValue, E> {
        Ok(LabelValue::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<LabelValue, E> {
        i64::try_from(v)
            .map(LabelValue::Int)
            .map_err(|_| E::custom("number too large for a label"))
    }
}

/// The most labels a site may carry, and the longest key and value, so that a hostile
/// hello cannot bloat the control plane's state.
pub const MAX_LABELS: usize = 64;
/// Longest label key, in bytes.
pub const MAX_LABEL_KEY: usize = 63;
/// Longest label text value, in bytes.
pub const MAX_LABEL_VALUE: usize = 256;

/// Checks one label: a key of lower-case letters, digits, `-`, `_`, `.` and `/`,
/// starting with a letter, and a value of bounded length. Returns what is wrong.
pub fn check_label(key: &str, value: &LabelValue) -> Result<(), String> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_LABEL_KEY
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_./".contains(c));
    if !key_ok {
        return Err(format!(
            "label key {key:?} must start with a lower-case letter and use only a-z, 0-9, '-', '_', '.', '/' (at most {MAX_LABEL_KEY} bytes)"
        ));
    }
    if let LabelValue::Text(text) = value
        && (text.len() > MAX_LABEL_VALUE || text.chars().any(char::is_control))
    {
        return Err(format!(
            "label {key:?} has a value longer than {MAX_LABEL_VALUE} bytes or with control characters"
        ));
    }
    Ok(())
}

/// Checks a whole label set; see [`check_label`].
pub fn check_labels(labels: &Labels) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels given, at most {MAX_LABELS} allowed",
            labels.len()
        ));
    }
    labels
        .iter()
        .try_for_each(|(key, value)| check_label(key, value))
}

/// Parses a `key=value` label given on a command line; values stay text.
pub fn parse_label_arg(arg: &str) -> Result<(String, LabelValue), String> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("label {arg:?} is not of the form key=value"))?;
    let value = LabelValue::Text(value.to_owned());
    check_label(key, &value)?;
    Ok((key.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_numbers_as_numbers() {
        let mut labels = Labels::new();
        labels.insert("cpus".into(), LabelValue::Int(4));
        labels.insert("tier".into(), "T1".into());
        let json = serde_json::to_string(&labels).unwrap();
        assert_eq!(json, r#"{"cpus":4,"tier":"T1"}"#);
        let back: Labels = serde_json::from_str(&json).unwrap();
        assert_eq!(back, labels);
    }

    #[test]
    fn legacy_strings_become_numbers_only_for_numeric_facts() {
        assert_eq!(
            LabelValue::from_legacy("memory", "1024".into()),
            LabelValue::Int(1024)
        );
        assert_eq!(
            LabelValue::from_legacy("rack", "12".into()),
            LabelValue::Text("12".into())
        );
        assert_eq!(
            LabelValue::from_legacy("cpus", "many".into()),
            LabelValue::Text("many".into())
        );
    }

    #[test]
    fn label_rules() {
        assert!(parse_label_arg("tier=T1").is_ok());
        assert!(parse_label_arg("Tier=T1").is_err());
        assert!(parse_label_arg("tier").is_err());
        assert!(check_label("x", &LabelValue::Text("a\nb".into())).is_err());
        assert!(check_label("x", &LabelValue::Text("a".repeat(300))).is_err());
    }
}
