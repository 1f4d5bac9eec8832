//! The rules for names of sites and operators, which appear in certificates, URLs,
//! container labels and logs, so they are kept to a small, safe alphabet.

use crate::error::NameError;

/// Longest name, in bytes (a DNS label's limit).
pub const MAX_NAME: usize = 63;

/// Checks a name: 1 to 63 of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn check_name(what: &'static str, name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what,
            name: name.to_owned(),
        })
    }
}

/// Turns a host name into something usable inside a site name: lower case, other
/// characters replaced by `-`, and short enough to fit after a prefix.
pub fn name_part_from_hostname(hostname: &str) -> String {
    let mut part: String = hostname
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    part.truncate(40);
    let trimmed = part.trim_matches('-');
    if trimmed.is_empty() {
        "host".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// This machine's host name (from the kernel), or `localhost` if it has none.
pub fn local_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["cern-t0", "a", "site.1", "x_y", "9lives"] {
            assert!(check_name("site", good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "UPPER", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(check_name("site", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostnames_become_name_parts() {
        assert_eq!(
            name_part_from_hostname("Node-07.Example.org"),
            "node-07-example-org"
        );
        assert_eq!(name_part_from_hostname("___"), "host");
        assert!(name_part_from_hostname(&"h".repeat(100)).len() <= 40);
    }
}
