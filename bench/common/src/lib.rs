//! Pieces the Sheaf benchmarks (`bench/api`, `bench/vm`) share.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;

use anyhow::Context as _;

/// A free port on 127.0.0.1 (free when this returns; the bind is dropped).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Text without ANSI colour sequences (`ESC [ … m`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `n` lines of a log file, without colour sequences.
pub fn tail(path: &Path, n: usize) -> String {
    let text = strip_ansi(&std::fs::read_to_string(path).unwrap_or_default());
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `KEY=VALUE` for clap's `value_parser`.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, not {s:?}"))
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values.
pub fn percentile<T: Copy + PartialOrd>(values: &[T], p: f64) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// Prints rows as a Markdown table: the first row is the header, the first
/// column left-aligned, the others right-aligned.
pub fn print_table(lines: &[Vec<String>]) {
    let Some(first) = lines.first() else { return };
    let widths: Vec<usize> =
        (0..first.len()).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    for (i, l) in lines.iter().enumerate() {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(
                |(c, s)| if c == 0 { format!(" {s:<w$} ", w = widths[c]) } else { format!(" {s:>w$} ", w = widths[c]) },
            )
            .collect();
        println!("|{}|", cells.join("|"));
        if i == 0 {
            let seps: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| if c == 0 { "-".repeat(w + 2) } else { format!("{}:", "-".repeat(w + 1)) })
                .collect();
            println!("|{}|", seps.join("|"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(strip_ansi("\u{1b}[2mx\u{1b}[0m=1"), "x=1");
        assert_eq!(percentile(&[5, 1, 3, 2, 4], 50.0), Some(3));
        assert_eq!(percentile(&[5, 1, 3, 2, 4], 100.0), Some(5));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("A").is_err());
    }
}
