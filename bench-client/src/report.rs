//! Counters shared by the scenarios, and the two output forms: a table for
//! people and one JSON line for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::proto;

/// Highest latency the histograms hold; larger samples are clamped to it
/// (and show up as a max equal to it).
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// Counts by a reason name (setup failures, dropped connections, client-side
/// protocol errors).
pub type Reasons = BTreeMap<String, u64>;

pub fn bump(reasons: &mut Reasons, reason: &str) {
    bump_by(reasons, reason, 1);
}

pub fn bump_by(reasons: &mut Reasons, reason: &str, n: u64) {
    if let Some(count) = reasons.get_mut(reason) {
        *count += n;
    } else {
        reasons.insert(reason.to_string(), n);
    }
}

pub fn merge(into: &mut Reasons, from: &Reasons) {
    for (reason, n) in from {
        bump_by(into, reason, *n);
    }
}

pub fn total(reasons: &Reasons) -> u64 {
    reasons.values().sum()
}

/// ERROR frames received, by code, with the first message seen for each.
#[derive(Debug, Default, Clone)]
pub struct ErrorCounts {
    by_code: BTreeMap<u16, u64>,
    sample: BTreeMap<u16, String>,
    /// Errors that carry only a text (NATS `-ERR`), by that text.
    by_text: Reasons,
}

impl ErrorCounts {
    /// Counts one ERROR payload. A payload too short to hold a code counts
    /// under code 0.
    pub fn add_payload(&mut self, payload: &[u8]) {
        let (code, message) = proto::decode_error(payload).unwrap_or((0, &[]));
        self.add(code, message);
    }

    pub fn add(&mut self, code: u16, message: &[u8]) {
        *self.by_code.entry(code).or_insert(0) += 1;
        self.sample
            .entry(code)
            .or_insert_with(|| String::from_utf8_lossy(message).into_owned());
    }

    /// Counts one error known only by its text (NATS `-ERR '<text>'`).
    pub fn add_text(&mut self, text: &[u8]) {
        bump(&mut self.by_text, &String::from_utf8_lossy(text));
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        merge(&mut self.by_text, &other.by_text);
        for (code, n) in &other.by_code {
            *self.by_code.entry(*code).or_insert(0) += n;
        }
        for (code, s) in &other.sample {
            self.sample.entry(*code).or_insert_with(|| s.clone());
        }
    }

    pub fn total(&self) -> u64 {
        self.by_code.values().sum::<u64>() + total(&self.by_text)
    }

    /// `{"dst_offline": 3, ...}`; unknown codes appear as `code_<n>`.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.by_code
                .iter()
                .map(|(code, n)| (code_label(*code), json!(n)))
                .chain(self.by_text.iter().map(|(t, n)| (t.clone(), json!(n))))
                .collect(),
        )
    }

    fn describe(&self) -> String {
        if self.by_code.is_empty() && self.by_text.is_empty() {
            return "none".into();
        }
        let mut s = String::new();
        for (code, n) in &self.by_code {
            let sample = self.sample.get(code).map(String::as_str).unwrap_or("");
            let _ = write!(s, "{}={} ({:?}) ", code_label(*code), n, sample);
        }
        for (text, n) in &self.by_text {
            let _ = write!(s, "{text:?}={n} ");
        }
        s.trim_end().to_string()
    }
}

fn code_label(code: u16) -> String {
    match proto::error_name(code) {
        "unknown_code" => format!("code_{code}"),
        name => name.to_string(),
    }
}

pub fn reasons_json(reasons: &Reasons) -> Value {
    Value::Object(reasons.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

fn describe_reasons(reasons: &Reasons) -> String {
    if reasons.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = reasons.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(" ")
}

/// A histogram of nanosecond samples, to report in microseconds.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("static histogram bounds are valid")
}

/// Percentiles in microseconds. All zero when there are no samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Latency {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    pub fn add_to(&self, prefix: &str, m: &mut JsonLine) {
        m.insert(&format!("{prefix}p50_us"), json!(self.p50_us));
        m.insert(&format!("{prefix}p90_us"), json!(self.p90_us));
        m.insert(&format!("{prefix}p99_us"), json!(self.p99_us));
        m.insert(&format!("{prefix}p999_us"), json!(self.p999_us));
        m.insert(&format!("{prefix}max_us"), json!(self.max_us));
        m.insert(&format!("{prefix}samples"), json!(self.samples));
    }

    fn describe(&self) -> String {
        format!(
            "p50 {} / p90 {} / p99 {} / p99.9 {} / max {} us ({} samples)",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us, self.samples
        )
    }
}

/// Rows of a two-column table, printed with aligned keys.
#[derive(Default)]
pub struct Table {
    rows: Vec<(String, String)>,
}

impl Table {
    pub fn row(&mut self, key: &str, value: impl ToString) -> &mut Table {
        self.rows.push((key.to_string(), value.to_string()));
        self
    }

    pub fn errors(&mut self, key: &str, errors: &ErrorCounts) -> &mut Table {
        self.row(key, errors.describe())
    }

    pub fn reasons(&mut self, key: &str, reasons: &Reasons) -> &mut Table {
        self.row(key, describe_reasons(reasons))
    }

    pub fn latency(&mut self, key: &str, latency: &Latency) -> &mut Table {
        self.row(key, latency.describe())
    }

    pub fn render(&self, title: &str) -> String {
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut s = format!("== {title} ==\n");
        for (k, v) in &self.rows {
            let _ = writeln!(s, "  {k:<width$}  {v}");
        }
        s
    }
}

/// Formats an optional byte count for the table.
pub fn bytes_text(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{b} B ({:.1} MiB)", b as f64 / (1024.0 * 1024.0)),
        None => "n/a".into(),
    }
}

/// A JSON object that keeps its keys in insertion order, so every line
/// starts with `{"scenario":..,"target":..` whatever serde_json's map does.
#[derive(Default)]
pub struct JsonLine {
    fields: Vec<(String, Value)>,
}

impl JsonLine {
    pub fn insert(&mut self, key: &str, value: Value) {
        self.fields.push((key.to_string(), value));
    }

    /// The value of a key, for tests.
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn render(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&Value::String(k.clone()).to_string());
            s.push(':');
            s.push_str(&v.to_string());
        }
        s.push('}');
        s
    }
}

/// Prints the table to stdout and then the JSON line as the last line, so a
/// script can take `tail -n1` or grep for `{"scenario"`.
pub fn emit(title: &str, table: &Table, json_line: &JsonLine) {
    print!("{}", table.render(title));
    println!("{}", json_line.render());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_counts_by_name_and_unknown_code() {
        let mut e = ErrorCounts::default();
        e.add_payload(&[0, 4, b'n', b'o']);
        e.add_payload(&[0, 4]);
        e.add_payload(&[0, 99]);
        e.add_payload(&[7]);
        assert_eq!(e.total(), 4);
        let j = e.to_json();
        assert_eq!(j["dst_offline"], 2);
        assert_eq!(j["code_99"], 1);
        assert_eq!(j["code_0"], 1);
        assert!(e.describe().contains("dst_offline=2 (\"no\")"));
    }

    #[test]
    fn latency_in_microseconds() {
        let mut h = latency_histogram();
        for ns in [10_000u64, 20_000, 30_000, 40_000] {
            h.record(ns).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.samples, 4);
        assert_eq!(l.max_us, 40.0);
        assert!(l.p50_us >= 19.9 && l.p50_us <= 20.1, "{}", l.p50_us);
        assert_eq!(Latency::from_histogram(&latency_histogram()).samples, 0);
    }

    #[test]
    fn json_line_keeps_key_order() {
        let mut j = JsonLine::default();
        j.insert("scenario", json!("hold"));
        j.insert("target", json!("gateway"));
        j.insert("a", json!({"x": 1}));
        assert_eq!(
            j.render(),
            r#"{"scenario":"hold","target":"gateway","a":{"x":1}}"#
        );
        assert_eq!(j.get("target"), Some(&json!("gateway")));
        let parsed: Value = serde_json::from_str(&j.render()).unwrap();
        assert_eq!(parsed["a"]["x"], 1);
    }

    #[test]
    fn reasons_merge_and_total() {
        let mut a = Reasons::new();
        bump(&mut a, "x");
        let mut b = Reasons::new();
        bump_by(&mut b, "x", 2);
        bump(&mut b, "y");
        merge(&mut a, &b);
        assert_eq!(total(&a), 4);
        assert_eq!(reasons_json(&a)["x"], 3);
    }
}
