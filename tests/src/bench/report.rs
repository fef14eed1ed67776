//! The table the bench prints (each figure for `runbook`, for Restate, and their ratio, with the
//! target it is held to) and the raw JSON it writes.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// One line of the table.
pub struct Row {
    pub label: String,
    pub ours: Option<f64>,
    pub restate: Option<f64>,
    pub decimals: usize,
    /// The target, in words, and whether it is met (when it applies to this line).
    pub target: Option<(String, bool)>,
}

impl Row {
    pub fn new(
        label: impl Into<String>,
        ours: Option<f64>,
        restate: Option<f64>,
        decimals: usize,
    ) -> Row {
        Row {
            label: label.into(),
            ours,
            restate,
            decimals,
            target: None,
        }
    }

    pub fn target(mut self, text: impl Into<String>, met: bool) -> Row {
        self.target = Some((text.into(), met));
        self
    }

    /// `runbook ÷ Restate`.
    pub fn ratio(&self) -> Option<f64> {
        match (self.ours, self.restate) {
            (Some(ours), Some(restate))
                if restate != 0.0 && ours.is_finite() && restate.is_finite() =>
            {
                Some(ours / restate)
            }
            _ => None,
        }
    }

    pub fn json(&self) -> Value {
        json!({"metric": self.label, "runbook": self.ours, "restate": self.restate,
               "runbook_over_restate": self.ratio(),
               "target": self.target.as_ref().map(|(text, _)| text),
               "met": self.target.as_ref().map(|(_, met)| met)})
    }
}

fn number(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(value) if value.is_finite() => {
            if value.abs() >= 10_000.0 {
                group_thousands(value.round() as i64)
            } else {
                format!("{value:.decimals$}")
            }
        }
        Some(_) => "n/a".to_owned(),
        None => "—".to_owned(),
    }
}

fn group_thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The rows as a Markdown table (it reads as plain text too).
pub fn table(rows: &[Row]) -> String {
    let header = [
        "metric",
        "runbook",
        "Restate",
        "runbook ÷ Restate",
        "target",
        "met",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|row| {
            [
                row.label.clone(),
                number(row.ours, row.decimals),
                number(row.restate, row.decimals),
                row.ratio()
                    .map_or_else(|| "—".to_owned(), |ratio| format!("{ratio:.3}")),
                row.target
                    .as_ref()
                    .map_or_else(String::new, |(text, _)| text.clone()),
                row.target.as_ref().map_or_else(String::new, |(_, met)| {
                    if *met { "yes" } else { "**no**" }.to_owned()
                }),
            ]
        })
        .collect();
    let width = |column: usize| {
        cells
            .iter()
            .map(|row| row[column].chars().count())
            .chain(std::iter::once(header[column].chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |values: &[String]| {
        let mut out = String::from("|");
        for (column, value) in values.iter().enumerate() {
            let pad = widths[column].saturating_sub(value.chars().count());
            if column == 0 || column >= 4 {
                let _ = write!(out, " {value}{} |", " ".repeat(pad));
            } else {
                let _ = write!(out, " {}{value} |", " ".repeat(pad));
            }
        }
        out
    };
    let mut out = line(&header.map(str::to_owned));
    out.push('\n');
    out.push('|');
    for (column, width) in widths.iter().enumerate() {
        let dashes = "-".repeat(*width);
        if column == 0 || column >= 4 {
            let _ = write!(out, "-{dashes}-|");
        } else {
            let _ = write!(out, "-{dashes}:|");
        }
    }
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}
