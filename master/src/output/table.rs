//! Plain-text tables for the terminal, with optional ANSI colours.

use std::io::IsTerminal;
use std::sync::OnceLock;

use crate::cli::ColorWhen;

/// A colour for one cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Color {
    Green,
    Yellow,
    Red,
    Dim,
}

impl Color {
    fn code(self) -> &'static str {
        match self {
            Color::Green => "32",
            Color::Yellow => "33",
            Color::Red => "31",
            Color::Dim => "2",
        }
    }
}

/// One cell: its text and an optional colour.
#[derive(Clone, Debug)]
pub(crate) struct Cell {
    text: String,
    color: Option<Color>,
}

impl Cell {
    pub(crate) fn colored(text: impl Into<String>, color: Color) -> Cell {
        Cell {
            text: text.into(),
            color: Some(color),
        }
    }
}

impl<T: Into<String>> From<T> for Cell {
    fn from(text: T) -> Cell {
        Cell {
            text: text.into(),
            color: None,
        }
    }
}

/// Columns padded to their widest cell; the last column is not padded.
#[derive(Debug)]
pub(crate) struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

/// `--color` as given; [`ColorWhen::Auto`] until [`set_color`] is called.
static COLOR: OnceLock<ColorWhen> = OnceLock::new();

/// Record `--color` for the whole process (the first call wins).
pub(crate) fn set_color(when: ColorWhen) {
    let _ = COLOR.set(when);
}

/// Whether to colour output on stdout: `--color always`; never with
/// `--color never`; else (auto) on a terminal with `NO_COLOR` unset or
/// empty. The flag beats `NO_COLOR`, as no-color.org asks.
pub(crate) fn stdout_color() -> bool {
    match COLOR.get().copied().unwrap_or(ColorWhen::Auto) {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    }
}

impl Table {
    pub(crate) fn new(headers: Vec<&'static str>) -> Table {
        Table {
            headers,
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self, color: bool) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(cell.text.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<(&str, Option<Color>)>, out: &mut String| {
            let mut s = String::new();
            for (i, (text, c)) in cells.iter().enumerate() {
                let last = i + 1 == cells.len();
                let pad = if last {
                    0
                } else {
                    widths[i].saturating_sub(text.chars().count()) + 2
                };
                match c {
                    Some(c) if color => s.push_str(&format!("\x1b[{}m{text}\x1b[0m", c.code())),
                    _ => s.push_str(text),
                }
                s.push_str(&" ".repeat(pad));
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(self.headers.iter().map(|h| (*h, None)).collect(), &mut out);
        for row in &self.rows {
            line(
                row.iter()
                    .take(n)
                    .map(|c| (c.text.as_str(), c.color))
                    .collect(),
                &mut out,
            );
        }
        out
    }
}

/// Days until a certificate expires, as the tables show it: yellow under
/// 30 days, red once expired.
pub(crate) fn expiry_cell(days: i64) -> Cell {
    match days {
        ..0 => Cell::colored(format!("{days} (expired)"), Color::Red),
        0..30 => Cell::colored(days.to_string(), Color::Yellow),
        _ => Cell::from(days.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns_and_colours_only_when_asked() {
        let mut t = Table::new(vec!["HOST", "AGENT", "DETAIL"]);
        t.row(vec![
            "w1".into(),
            Cell::colored("updated", Color::Green),
            "abc".into(),
        ]);
        t.row(vec![
            "worker-02".into(),
            Cell::colored("error", Color::Red),
            "refused".into(),
        ]);
        let plain = t.render(false);
        assert_eq!(
            plain,
            "HOST       AGENT    DETAIL\nw1         updated  abc\nworker-02  error    refused\n"
        );
        let colored = t.render(true);
        assert!(colored.contains("\x1b[32mupdated\x1b[0m  abc"), "{colored}");
    }
}
