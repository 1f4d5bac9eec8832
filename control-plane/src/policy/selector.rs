//! Selectors: expressions over a site's labels, in CEL (the Common Expression Language,
//! as Kubernetes uses it), with the variable `labels` and operators only.
//!
//! Grammar, as operators see it:
//!
//! | form | example |
//! | --- | --- |
//! | equality | `labels.tier == "T1"`, `labels.region != "eu"` |
//! | sets | `labels.tier in ["T1", "T2"]` |
//! | numbers (cpus, memory in bytes) | `labels.cpus >= 8`, `labels.memory > 16 * 1073741824` |
//! | and, or, not | `labels.tier == "T1" && !(labels.region == "us")`, `a \|\| b` |
//! | presence | `has(labels.gpu)`, `"gpu" in labels` |
//!
//! A label a site does not have makes a comparison on it false (so `labels.gpu == "a100"`
//! simply does not select sites without the label). Anything else — another variable, a
//! function call — is refused when the expression is checked, with its line and column.

use std::collections::HashMap;
use std::fmt;

use cel::{Context, Program, Value};
use continuum_shared::labels::{LabelValue, Labels};

/// The only variable an expression may use.
const VARIABLE: &str = "labels";

/// The operators (as CEL names them) and the `has` macro; nothing else may be called.
const ALLOWED: &[&str] = &[
    "_==_",
    "_!=_",
    "_<_",
    "_<=_",
    "_>_",
    "_>=_",
    "_&&_",
    "_||_",
    "!_",
    "@in",
    "_+_",
    "_-_",
    "_*_",
    "-_",
    "_[_]",
    "has",
    "@not_strictly_false",
];

/// A checked expression.
pub struct Selector {
    text: String,
    program: Program,
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({:?})", self.text)
    }
}

/// Why an expression was refused; line and column are 1-based, within the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    /// Line in the expression.
    pub line: usize,
    /// Column in that line.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}:{}: {}", self.line, self.column, self.message)
    }
}

impl Selector {
    /// Parses and checks `text`.
    pub fn compile(text: &str) -> Result<Selector, SelectorError> {
        let program = Program::compile(text).map_err(|errors| {
            let first = errors.errors.first();
            SelectorError {
                line: first.map_or(1, |e| e.pos.0.max(1) as usize),
                column: first.map_or(1, |e| e.pos.1.max(0) as usize + 1),
                message: first.map_or_else(|| "does not parse".into(), |e| e.msg.clone()),
            }
        })?;
        let references = program.references();
        let at = |name: &str| {
            let offset = text.find(name).unwrap_or(0);
            let before = &text[..offset];
            SelectorError {
                line: before.matches('\n').count() + 1,
                column: offset - before.rfind('\n').map_or(0, |n| n + 1) + 1,
                message: String::new(),
            }
        };
        for function in references.functions() {
            if !ALLOWED.contains(&function) {
                return Err(SelectorError {
                    message: format!(
                        "unknown function {function:?}: only comparisons, `in`, `has`, &&, || and ! are allowed"
                    ),
                    ..at(function)
                });
            }
        }
        for variable in references.variables() {
            if variable != VARIABLE {
                return Err(SelectorError {
                    message: format!(
                        "unknown name {variable:?}: expressions read site labels as labels.NAME"
                    ),
                    ..at(variable)
                });
            }
        }
        Ok(Selector {
            text: text.to_owned(),
            program,
        })
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether a site with `labels` is selected. An expression that does not come out
    /// as `true` (a missing label, a type mismatch) does not select it.
    pub fn matches(&self, labels: &Labels) -> bool {
        let map: HashMap<String, Value> = labels
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    LabelValue::Text(s) => Value::String(s.clone().into()),
                    LabelValue::Int(n) => Value::Int(*n),
                };
                (k.clone(), value)
            })
            .collect();
        let mut context = Context::default();
        context.add_variable_from_value(VARIABLE, map);
        matches!(self.program.execute(&context), Ok(Value::Bool(true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, LabelValue)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn text(s: &str) -> LabelValue {
        LabelValue::Text(s.into())
    }

    #[test]
    fn equality_sets_numbers_and_logic() {
        let t1 = labels(&[
            ("tier", text("T1")),
            ("region", text("eu")),
            ("cpus", LabelValue::Int(16)),
            ("memory", LabelValue::Int(64 << 30)),
        ]);
        let edge = labels(&[("tier", text("edge")), ("cpus", LabelValue::Int(2))]);
        for (expression, a, b) in [
            (r#"labels.tier == "T1""#, true, false),
            (r#"labels.tier in ["T1", "T2"]"#, true, false),
            ("labels.cpus >= 8", true, false),
            ("labels.memory > 32 * 1073741824", true, false),
            (r#"labels.tier == "edge" || labels.cpus > 8"#, true, true),
            (r#"!(labels.tier == "T1") && labels.cpus < 4"#, false, true),
            ("has(labels.region)", true, false),
            (r#""region" in labels"#, true, false),
            (r#"labels.gpu == "a100""#, false, false),
        ] {
            let s = Selector::compile(expression).unwrap();
            assert_eq!((s.matches(&t1), s.matches(&edge)), (a, b), "{expression}");
        }
    }

    #[test]
    fn selectors_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync>() {}
        shared::<Selector>();
    }

    #[test]
    fn bad_expressions_are_refused_with_their_position() {
        let error = Selector::compile("labels.tier == ").unwrap_err();
        assert_eq!(error.line, 1);
        assert!(error.column > 1, "{error}");
        let error = Selector::compile(r#"labels.tier == "T1" && size(labels) > 2"#).unwrap_err();
        assert!(
            error.message.contains("unknown function \"size\""),
            "{error}"
        );
        assert_eq!((error.line, error.column), (1, 24));
        let error = Selector::compile(r#"site.tier == "T1""#).unwrap_err();
        assert!(error.message.contains("unknown name \"site\""), "{error}");
        assert_eq!((error.line, error.column), (1, 1));
    }
}
