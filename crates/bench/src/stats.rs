//! Latency histograms, error tallies and the tables the scenarios print.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latencies in nanoseconds, 3 significant digits, up to 10 minutes.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        let ns = (d.as_nanos() as u64).clamp(1, self.0.high());
        self.0.record(ns).expect("value within bounds");
    }

    pub fn merge(&mut self, other: &Latency) {
        self.0.add(&other.0).expect("same bounds");
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile (0..=1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        (!self.0.is_empty()).then(|| Duration::from_nanos(self.0.value_at_quantile(q)))
    }

    pub fn max(&self) -> Option<Duration> {
        (!self.0.is_empty()).then(|| Duration::from_nanos(self.0.max()))
    }

    pub fn mean(&self) -> Option<Duration> {
        (!self.0.is_empty()).then(|| Duration::from_nanos(self.0.mean() as u64))
    }

    pub fn p50(&self) -> Option<Duration> {
        self.quantile(0.50)
    }

    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }

    /// `{p50, p99, max, mean}` in microseconds (floats), for the JSON line.
    pub fn json_us(&self) -> Value {
        let us = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e6);
        json!({
            "count": self.count(),
            "p50_us": us(self.p50()),
            "p99_us": us(self.p99()),
            "max_us": us(self.max()),
            "mean_us": us(self.mean()),
        })
    }
}

/// Errors of one target: how many, and the first few messages.
#[derive(Default, Clone, Debug)]
pub struct Errors {
    pub count: u64,
    pub first: Vec<String>,
}

impl Errors {
    /// Says on stderr what went wrong in `target`'s unrecorded warm-up connections, if anything
    /// did: they are not in the figures, but a failing target should not pass unnoticed.
    pub fn report_warmup(&self, target: &str) {
        if self.count > 0 {
            eprintln!("scfsim-bench: {target} warm-up errors: {:?}", self.first);
        }
    }

    pub fn add(&mut self, err: impl std::fmt::Display) {
        self.count += 1;
        if self.first.len() < 5 {
            self.first.push(err.to_string());
        }
    }

    pub fn merge(&mut self, other: &Errors) {
        self.count += other.count;
        for e in &other.first {
            if self.first.len() < 5 {
                self.first.push(e.clone());
            }
        }
    }

    pub fn json(&self) -> Value {
        json!({ "count": self.count, "first": self.first })
    }
}

/// A markdown table: a header row, then rows of cells.
/// A table of one column per target, plus, for every target but the reference, a column
/// comparing it with the reference (a ratio or a difference).
pub struct Comparison<'a, T> {
    tallies: &'a [T],
    reference: Option<usize>,
    compared: Vec<usize>,
    table: Table,
}

impl<'a, T> Comparison<'a, T> {
    /// `names[i]` heads the column of `tallies[i]`; comparison columns are headed
    /// "<name> <versus>".
    pub fn new(names: &[&str], tallies: &'a [T], reference: Option<usize>, versus: &str) -> Self {
        let compared: Vec<usize> = match reference {
            Some(r) => (0..names.len()).filter(|i| *i != r).collect(),
            None => Vec::new(),
        };
        let mut header: Vec<String> = vec!["metric".into()];
        header.extend(names.iter().map(|n| n.to_string()));
        header.extend(compared.iter().map(|i| format!("{} {versus}", names[*i])));
        Comparison {
            tallies,
            reference,
            compared,
            table: Table::new(header),
        }
    }

    /// A row of the `q` quantile of the latency `of` picks (ms), with each target's difference
    /// to the reference.
    pub fn latency_row(&mut self, label: &str, of: impl Fn(&T) -> &Latency, q: f64) {
        self.row(label, &|t| fmt_ms(of(t).quantile(q)), &|a, b| {
            fmt_diff_ms(of(a).quantile(q), of(b).quantile(q))
        });
    }

    pub fn row(&mut self, label: &str, f: &dyn Fn(&T) -> String, cmp: &dyn Fn(&T, &T) -> String) {
        let mut cells = vec![label.to_string()];
        cells.extend(self.tallies.iter().map(f));
        if let Some(r) = self.reference {
            let tallies = self.tallies;
            cells.extend(self.compared.iter().map(|i| cmp(&tallies[*i], &tallies[r])));
        }
        self.table.row(cells);
    }

    pub fn render(&self) -> String {
        self.table.render()
    }
}

/// Prints one scenario's report: its heading, the load average after it, the table, the first
/// errors of each target and the targets that were skipped (with why).
pub fn print_scenario<'e>(
    heading: &str,
    load_average: &str,
    table: &str,
    errors: impl IntoIterator<Item = (&'e str, &'e Errors)>,
    skipped: &serde_json::Map<String, Value>,
) {
    println!("\n### {heading}\n");
    println!("load average after: {load_average}\n");
    print!("{table}");
    for (target, errors) in errors {
        for e in &errors.first {
            println!("  {target} error: {e}");
        }
    }
    for (name, why) in skipped {
        println!("  {name}: skipped ({})", why.as_str().unwrap_or_default());
    }
}

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Table {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }

    /// Rendered with aligned columns (still valid markdown).
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![3usize; cols];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                width[i] = width[i].max(cell.chars().count());
            }
        }
        let line = |row: &[String]| {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = width[i] - c.chars().count();
                    if i == 0 {
                        format!("{c}{}", " ".repeat(pad))
                    } else {
                        format!("{}{c}", " ".repeat(pad))
                    }
                })
                .collect();
            format!("| {} |", cells.join(" | "))
        };
        let mut out = line(&self.header);
        out.push('\n');
        let sep: Vec<String> = width
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    "-".repeat(w + 2)
                } else {
                    format!("{}:", "-".repeat(w + 1))
                }
            })
            .collect();
        out.push_str(&format!("|{}|\n", sep.join("|")));
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

/// A duration in the unit that reads best next to its peers: "µs" with no decimals or "ms"
/// with two.
pub fn fmt_us(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.0}", d.as_secs_f64() * 1e6),
        None => "–".into(),
    }
}

pub fn fmt_ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.2}", d.as_secs_f64() * 1e3),
        None => "–".into(),
    }
}

/// A rate with thousands separators and no decimals (or one below 100).
pub fn fmt_rate(r: f64) -> String {
    if !r.is_finite() {
        return "–".into();
    }
    if r < 100.0 {
        return format!("{r:.1}");
    }
    let s = format!("{:.0}", r);
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `a / b` as "0.87×", or "–".
pub fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match ratio(a, b) {
        Some(r) => format!("{r:.2}×"),
        None => "–".into(),
    }
}

pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// `a - b` in ms as "+1.23 ms".
pub fn fmt_diff_ms(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => {
            let d = a.as_secs_f64() * 1e3 - b.as_secs_f64() * 1e3;
            format!("{d:+.2} ms")
        }
        _ => "–".into(),
    }
}

pub fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_formatting() {
        let mut l = Latency::default();
        for us in 1..=100 {
            l.record(Duration::from_micros(us));
        }
        let p50 = l.p50().unwrap().as_micros();
        assert!((49..=51).contains(&p50), "{p50}");
        assert_eq!(fmt_rate(1234567.4), "1,234,567");
        assert_eq!(fmt_rate(999.0), "999");
        assert_eq!(fmt_ratio(Some(1.0), Some(2.0)), "0.50×");
        assert_eq!(
            fmt_diff_ms(
                Some(Duration::from_millis(3)),
                Some(Duration::from_millis(1))
            ),
            "+2.00 ms"
        );
        let mut t = Table::new(["a", "bb"]);
        t.row(["x", "1"]);
        assert_eq!(t.render(), "| a   |  bb |\n|-----|----:|\n| x   |   1 |\n");
    }
}
