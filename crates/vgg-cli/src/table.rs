//! One table, rendered as aligned text, Markdown or CSV, so every report shares its columns.

use std::fmt::Write;

pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Columns of text, left-aligned; the rest are numbers, right-aligned.
    text: Vec<bool>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        let headers: Vec<String> = headers.into_iter().map(Into::into).collect();
        let text = (0..headers.len()).map(|c| c == 0).collect();
        Table {
            headers,
            rows: Vec::new(),
            text,
        }
    }

    /// Which columns are text, one flag per column.
    pub fn with_text_mask(mut self, mask: Vec<bool>) -> Table {
        debug_assert_eq!(mask.len(), self.headers.len());
        self.text = mask;
        self
    }

    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.headers.len());
        self.rows.push(row);
    }

    fn widths(&self) -> Vec<usize> {
        (0..self.headers.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([self.headers[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Aligned text: text columns to the left, numbers to the right.
    pub fn text(&self) -> String {
        let widths = self.widths();
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (c, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                let gap = if c == 0 { "" } else { "  " };
                if self.text[c] {
                    let _ = write!(out, "{gap}{cell:<w$}");
                } else {
                    let _ = write!(out, "{gap}{cell:>w$}");
                }
            }
            out.trim_end().to_string()
        };
        let mut out = line(&self.headers);
        let rule = "-".repeat(out.chars().count());
        out = format!("{out}\n{rule}\n");
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out.push_str(&rule);
        out.push('\n');
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("| {} |\n", self.headers.join(" | "));
        let align: Vec<&str> = (0..self.headers.len())
            .map(|c| if self.text[c] { "---" } else { "---:" })
            .collect();
        let _ = writeln!(out, "|{}|", align.join("|"));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }

    /// RFC 4180 CSV; numbers carry no thousands separators there.
    pub fn csv(&self) -> String {
        let quote = |s: &String| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.clone()
            }
        };
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let cells: Vec<String> = row.iter().map(quote).collect();
            let _ = writeln!(out, "{}", cells.join(","));
        }
        out
    }
}

/// "1 layer", "3 layers".
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub use vgg_report::numbers::{bytes, si, thousands};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_three_ways() {
        let mut t = Table::new(["name", "n"]);
        t.push(vec!["a,b".into(), "1".into()]);
        assert_eq!(t.csv(), "name,n\n\"a,b\",1\n");
        assert!(t
            .markdown()
            .starts_with("| name | n |\n|---|---:|\n| a,b | 1 |"));
        assert!(t.text().contains("a,b   1"), "{}", t.text());
    }
}
