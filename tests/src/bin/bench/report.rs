//! The results table: each figure's median and min–max spread, its ratio
//! to its baseline, and its target; plus the per-phase breakdown of swarm
//! pushes and the memory readings.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::stats::Summary;

/// What a row's samples are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    Seconds,
    Bytes,
    /// A plain count (failed requests).
    Count,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Seconds if v < 10.0 => format!("{v:.3} s"),
            Unit::Seconds => format!("{v:.1} s"),
            Unit::Bytes => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
            Unit::Count => format!("{v:.0}"),
        }
    }

    fn show_bare(self, v: f64) -> String {
        match self {
            Unit::Seconds if v < 10.0 => format!("{v:.3}"),
            Unit::Seconds => format!("{v:.1}"),
            Unit::Bytes => format!("{:.1}", v / (1024.0 * 1024.0)),
            Unit::Count => format!("{v:.0}"),
        }
    }
}

/// A target: met when the median is at most `limit`.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) text: String,
    pub(crate) limit: f64,
}

/// One figure.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) key: String,
    pub(crate) label: String,
    pub(crate) unit: Unit,
    pub(crate) samples: Vec<f64>,
    /// Keys of the rows this one is compared with.
    pub(crate) baselines: Vec<String>,
    pub(crate) target: Option<Target>,
}

/// Medians of the phases of one kind of push, in milliseconds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Phases {
    pub(crate) label: String,
    /// Phase name → samples (ms), in display order.
    pub(crate) columns: Vec<(String, Vec<f64>)>,
}

impl Phases {
    pub(crate) fn new(label: &str) -> Phases {
        Phases {
            label: label.to_owned(),
            columns: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, phase: &str, ms: f64) {
        match self.columns.iter_mut().find(|(p, _)| p == phase) {
            Some((_, v)) => v.push(ms),
            None => self.columns.push((phase.to_owned(), vec![ms])),
        }
    }
}

/// Everything measured in one run.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) phases: Vec<Phases>,
    /// Free-form lines printed under the tables (sizes, notes).
    pub(crate) notes: Vec<String>,
    index: BTreeMap<String, usize>,
}

impl Report {
    /// The row `key`, created with `label` and `unit` if new.
    pub(crate) fn row(&mut self, key: &str, label: &str, unit: Unit) -> &mut Row {
        let i = match self.index.get(key) {
            Some(&i) => i,
            None => {
                self.rows.push(Row {
                    key: key.to_owned(),
                    label: label.to_owned(),
                    unit,
                    samples: Vec::new(),
                    baselines: Vec::new(),
                    target: None,
                });
                self.index.insert(key.to_owned(), self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Row> {
        self.index.get(key).map(|&i| &self.rows[i])
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut Row> {
        self.index.get(key).map(|&i| &mut self.rows[i])
    }

    pub(crate) fn median(&self, key: &str) -> Option<f64> {
        self.get(key)
            .and_then(|r| Summary::of(&r.samples))
            .map(|s| s.median)
    }

    pub(crate) fn phases(&mut self, label: &str) -> &mut Phases {
        if let Some(i) = self.phases.iter().position(|p| p.label == label) {
            return &mut self.phases[i];
        }
        self.phases.push(Phases::new(label));
        let last = self.phases.len() - 1;
        &mut self.phases[last]
    }

    /// The whole report as plain text.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let header = [
            "key",
            "figure",
            "median",
            "min–max",
            "n",
            "vs baseline",
            "target",
            "",
        ];
        let mut lines: Vec<[String; 8]> = Vec::new();
        for row in &self.rows {
            let Some(s) = Summary::of(&row.samples) else {
                continue;
            };
            let ratio = row
                .baselines
                .iter()
                .filter_map(|b| Some((self.get(b)?, self.median(b)?)))
                .filter(|(_, m)| *m > 0.0)
                .map(|(b, m)| format!("{:.2}× {}", s.median / m, b.key))
                .collect::<Vec<_>>()
                .join(", ");
            let (target, verdict) = match &row.target {
                Some(t) => (
                    t.text.clone(),
                    if s.median <= t.limit { "met" } else { "MISSED" }.to_owned(),
                ),
                None => (String::new(), String::new()),
            };
            lines.push([
                row.key.clone(),
                row.label.clone(),
                row.unit.show(s.median),
                format!(
                    "{}–{}",
                    row.unit.show_bare(s.min),
                    row.unit.show_bare(s.max)
                ),
                s.n.to_string(),
                ratio,
                target,
                verdict,
            ]);
        }
        out.push_str(&table(&header, &lines));

        for p in &self.phases {
            if p.columns.is_empty() {
                continue;
            }
            if p.label.contains("median") {
                let _ = writeln!(out, "\nphases of {}, ms", p.label);
            } else {
                let _ = writeln!(out, "\nphases of {} (median ms over the reps)", p.label);
            }
            let head: Vec<&str> = p.columns.iter().map(|(c, _)| c.as_str()).collect();
            let vals: Vec<String> = p
                .columns
                .iter()
                .map(|(_, v)| {
                    Summary::of(v)
                        .map(|s| format!("{:.0}", s.median))
                        .unwrap_or_default()
                })
                .collect();
            out.push_str(&table_dyn(&head, &[vals]));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "{n}");
            }
        }
        out
    }
}

fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let head: Vec<&str> = header.to_vec();
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.to_vec()).collect();
    table_dyn(&head, &rows)
}

fn table_dyn<R: AsRef<[String]>>(header: &[&str], rows: &[R]) -> String {
    let n = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.as_ref().iter().enumerate().take(n) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(c.chars().count());
            l.push_str(c);
            if i + 1 < n {
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    let dashes: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    line(dashes.iter().map(String::as_str).collect(), &mut out);
    for r in rows {
        line(r.as_ref().iter().map(String::as_str).collect(), &mut out);
    }
    out
}
