//! Printing listings as aligned tables or JSON.

use serde::Serialize;

use super::Output;

/// Prints `value` as JSON, or `rows` under `headers` as a table.
pub fn print<T: Serialize>(output: Output, value: &T, headers: &[&str], rows: Vec<Vec<String>>) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Table => print!("{}", table(headers, &rows)),
    }
}

/// Aligned columns separated by two spaces; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    }
    out
}

/// `-` for a missing value.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let text = table(
            &["NAME", "STATUS"],
            &[
                vec!["a-long-name".into(), "online".into()],
                vec!["b".into(), "offline".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME         STATUS\na-long-name  online\nb            offline\n"
        );
    }
}
