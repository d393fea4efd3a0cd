//! `plot`: SVG charts for BENCHMARKS.md from saved JSON lines (the last
//! stdout line of each scenario run, collected into a file).
//!
//! - `throughput-vs-p99.svg`: pingpong runs, one series per target; x is
//!   `msgs_per_s`, y is `p99_us` on a log scale, points joined in order of
//!   increasing pairs x window and labelled `PxW`.
//! - `rss-vs-connections.svg`: hold (or soak) runs, one series per target;
//!   x is the connections alive when the RSS was read, y is
//!   `rss_loaded_bytes` in MiB. The legend gives `bytes_per_conn` at the
//!   largest run.
//! - `bytes-per-connection.svg`: the same runs, y is `bytes_per_conn`.
//!
//! A target that shows up with more than one transport (gateway over tcp and
//! ws) or payload size gets one series for each, named after what differs.
//!
//! Parsing and grouping are pure functions ([`parse_lines`],
//! [`pingpong_series`], [`hold_series`]). Drawing uses plotters' SVG backend
//! without any font feature: the backend writes `<text>` elements itself and
//! leaves the glyphs to the viewer; plotters only estimates text sizes for
//! its layout. No executor and no socket is involved.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::{Map, Value};

use crate::cli::PlotArgs;

pub const THROUGHPUT_SVG: &str = "throughput-vs-p99.svg";
pub const RSS_SVG: &str = "rss-vs-connections.svg";
pub const BYTES_PER_CONN_SVG: &str = "bytes-per-connection.svg";

const WIDTH: u32 = 960;
const HEIGHT: u32 = 600;
const MIB: f64 = 1024.0 * 1024.0;

/// One JSON line: an object with a string "scenario".
pub type Record = Map<String, Value>;

/// One point of a chart, with a short label drawn beside it (may be empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub label: String,
    /// Points are joined only to neighbours of the same curve (pingpong:
    /// one curve per pair count, through its windows).
    pub curve: u64,
}

/// Points of one target, in the order they are joined.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// Palette index, the same for one target on every chart.
    pub color: usize,
    pub points: Vec<Point>,
}

/// Series of one chart, and why some records were left out of it.
#[derive(Debug, Default)]
pub struct Grouped {
    pub series: Vec<Series>,
    pub skipped: Vec<String>,
}

/// The hold charts: RSS and bytes per connection, by target.
#[derive(Debug, Default)]
pub struct HoldGrouped {
    pub rss: Vec<Series>,
    pub bytes_per_conn: Vec<Series>,
    pub skipped: Vec<String>,
}

/// Keeps the lines that are JSON objects with a string "scenario" field;
/// blank lines, tables, progress text and other JSON are skipped.
pub fn parse_lines(text: &str) -> Vec<Record> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if !line.starts_with('{') {
                return None;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(m)) if m.get("scenario").is_some_and(Value::is_string) => Some(m),
                _ => None,
            }
        })
        .collect()
}

fn str_field<'a>(r: &'a Record, key: &str) -> Option<&'a str> {
    r.get(key).and_then(Value::as_str)
}

/// A finite number, or `None` when missing, null or not a number.
fn num_field(r: &Record, key: &str) -> Option<f64> {
    r.get(key).and_then(Value::as_f64).filter(|v| v.is_finite())
}

fn scenario(r: &Record) -> &str {
    str_field(r, "scenario").unwrap_or("")
}

/// What tells series apart. The name shows only the parts that vary for one
/// target, so a plain sweep gives plain names ("gateway", "nats").
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeriesKey {
    target: String,
    transport: String,
    /// "hold" and "soak" (hold with traffic) of one target differ.
    scenario: String,
    payload: Option<u64>,
}

struct Keyed {
    key: SeriesKey,
    /// Points are joined in increasing order of this (stable for ties).
    order: (f64, f64),
    point: Point,
}

fn key_of(r: &Record, with_payload: bool) -> SeriesKey {
    SeriesKey {
        target: str_field(r, "target").unwrap_or("unknown").to_string(),
        transport: str_field(r, "transport").unwrap_or("").to_string(),
        scenario: scenario(r).to_string(),
        payload: if with_payload {
            num_field(r, "payload").map(|p| p as u64)
        } else {
            None
        },
    }
}

fn series_name(key: &SeriesKey, keys: &[SeriesKey]) -> String {
    let same_target: Vec<&SeriesKey> = keys.iter().filter(|k| k.target == key.target).collect();
    let mut name = key.target.clone();
    let vary = |f: fn(&SeriesKey) -> &str| same_target.iter().any(|k| f(k) != f(key));
    let parts: Vec<&str> = [
        (vary(|k| &k.transport), key.transport.as_str()),
        (vary(|k| &k.scenario), key.scenario.as_str()),
    ]
    .into_iter()
    .filter(|(varies, part)| *varies && !part.is_empty())
    .map(|(_, part)| part)
    .collect();
    if !parts.is_empty() {
        name.push_str(&format!(" ({})", parts.join(", ")));
    }
    let payloads_vary = same_target.iter().any(|k| k.payload != key.payload);
    if payloads_vary {
        if let Some(p) = key.payload {
            name.push_str(&format!(" {p} B"));
        }
    }
    name
}

/// Series keys in order of first appearance.
fn keys_of(keyed: &[Keyed]) -> Vec<SeriesKey> {
    let mut keys: Vec<SeriesKey> = Vec::new();
    for k in keyed {
        if !keys.contains(&k.key) {
            keys.push(k.key.clone());
        }
    }
    keys
}

/// Groups points by key, series in order of first appearance, points sorted
/// by their order key. Names and colors come from the key's place among
/// `universe` (all keys of the charts that show these targets).
fn group(keyed: Vec<Keyed>, universe: &[SeriesKey]) -> Vec<(SeriesKey, Series)> {
    keys_of(&keyed)
        .iter()
        .map(|key| {
            let mut members: Vec<&Keyed> = keyed.iter().filter(|k| &k.key == key).collect();
            members.sort_by(|a, b| {
                a.order
                    .partial_cmp(&b.order)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            let series = Series {
                name: series_name(key, universe),
                color: universe.iter().position(|k| k == key).unwrap_or(0),
                points: members.iter().map(|k| k.point.clone()).collect(),
            };
            (key.clone(), series)
        })
        .collect()
}

/// Pingpong records as throughput/latency series: x = `msgs_per_s`, y =
/// `p99_us`, one curve per pair count joined in order of increasing window.
/// Runs that measured nothing (no rate or no p99) are skipped with a note.
pub fn pingpong_series(records: &[Record]) -> Grouped {
    let mut keyed = Vec::new();
    let mut skipped = Vec::new();
    for r in records.iter().filter(|r| scenario(r) == "pingpong") {
        let key = key_of(r, true);
        let fields = (
            num_field(r, "pairs"),
            num_field(r, "window"),
            num_field(r, "msgs_per_s"),
            num_field(r, "p99_us"),
        );
        let (Some(pairs), Some(window), Some(rate), Some(p99)) = fields else {
            skipped.push(format!(
                "pingpong {}: no pairs, window, msgs_per_s or p99_us field",
                key.target
            ));
            continue;
        };
        if rate <= 0.0 || p99 <= 0.0 {
            skipped.push(format!(
                "pingpong {} {pairs}x{window}: nothing measured (msgs_per_s {rate}, p99_us {p99})",
                key.target
            ));
            continue;
        }
        keyed.push(Keyed {
            key,
            order: (pairs, window),
            point: Point {
                x: rate,
                y: p99,
                label: format!("{pairs}×{window}"),
                curve: pairs as u64,
            },
        });
    }
    Grouped {
        series: {
            let universe = keys_of(&keyed);
            group(keyed, &universe)
                .into_iter()
                .map(|(_, s)| s)
                .collect()
        },
        skipped,
    }
}

/// Connections the RSS reading stands for: those alive when it was read
/// (`alive_loaded`), else those up, else those asked for.
fn connections(r: &Record) -> Option<f64> {
    ["alive_loaded", "up", "conns"]
        .iter()
        .filter_map(|k| num_field(r, k))
        .find(|&c| c > 0.0)
}

/// Hold (and soak) records as RSS and bytes-per-connection series, x = the
/// connections alive when the RSS was read. Runs without a server RSS
/// (no `--server-pid`) are skipped with a note.
pub fn hold_series(records: &[Record]) -> HoldGrouped {
    let mut rss = Vec::new();
    let mut per_conn = Vec::new();
    let mut skipped = Vec::new();
    for r in records
        .iter()
        .filter(|r| matches!(scenario(r), "hold" | "soak"))
    {
        let key = key_of(r, false);
        let Some(conns) = connections(r) else {
            skipped.push(format!(
                "{} {}: no connections alive",
                scenario(r),
                key.target
            ));
            continue;
        };
        let Some(loaded) = num_field(r, "rss_loaded_bytes") else {
            skipped.push(format!(
                "{} {} {conns} conns: no rss_loaded_bytes (run without --server-pid?)",
                scenario(r),
                key.target
            ));
            continue;
        };
        rss.push(Keyed {
            key: key.clone(),
            order: (conns, 0.0),
            point: Point {
                x: conns,
                y: loaded / MIB,
                label: String::new(),
                curve: 0,
            },
        });
        if let Some(b) = num_field(r, "bytes_per_conn") {
            per_conn.push(Keyed {
                key,
                order: (conns, 0.0),
                point: Point {
                    x: conns,
                    y: b,
                    label: format!("{b:.0} B"),
                    curve: 0,
                },
            });
        }
    }
    let universe = keys_of(&rss);
    let per_conn = group(per_conn, &universe);
    let rss = group(rss, &universe)
        .into_iter()
        .map(|(key, mut s)| {
            // The legend carries bytes per connection at the largest run.
            let largest = per_conn
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, s)| s.points.last());
            if let Some(p) = largest {
                s.name = format!("{}: {:.0} B/conn at {}", s.name, p.y, p.x);
            }
            s
        })
        .collect();
    HoldGrouped {
        rss,
        bytes_per_conn: per_conn.into_iter().map(|(_, s)| s).collect(),
        skipped,
    }
}

/// Titles and axis choices of one chart.
pub struct ChartSpec<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    /// Logarithmic y axis (latencies spanning decades).
    pub log_y: bool,
    /// Whether x tick labels use k/M suffixes.
    pub x_si: bool,
}

/// Files written and notes on what was left out.
#[derive(Debug, Default)]
pub struct Outcome {
    pub written: Vec<PathBuf>,
    pub notes: Vec<String>,
}

/// Draws every chart the records have data for into `out_dir`. A chart
/// without data is not drawn and gets a note instead.
pub fn plot_all(records: &[Record], out_dir: &Path) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();

    let pp = pingpong_series(records);
    out.notes.extend(pp.skipped);
    let payloads: Vec<u64> = {
        let mut p: Vec<u64> = records
            .iter()
            .filter(|r| scenario(r) == "pingpong")
            .filter_map(|r| num_field(r, "payload").map(|v| v as u64))
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    let title = match payloads.as_slice() {
        [one] => {
            format!("pingpong: throughput vs p99 round trip ({one} B payload; labels pairs×window)")
        }
        _ => "pingpong: throughput vs p99 round trip (labels pairs×window)".to_string(),
    };
    let spec = ChartSpec {
        title: &title,
        x_desc: "delivered messages/s (both directions)",
        y_desc: "p99 round trip (µs, log scale)",
        log_y: true,
        x_si: true,
    };
    chart_or_note(
        &mut out,
        out_dir,
        THROUGHPUT_SVG,
        &spec,
        &pp.series,
        "pingpong",
    )?;

    let hold = hold_series(records);
    out.notes.extend(hold.skipped);
    let has = |name: &str| records.iter().any(|r| scenario(r) == name);
    let kind = match (has("hold"), has("soak")) {
        (true, true) => "hold / soak",
        (false, true) => "soak",
        _ => "hold",
    };
    let title = format!("{kind}: server RSS with connections open");
    let spec = ChartSpec {
        title: &title,
        x_desc: "connections alive when RSS was read",
        y_desc: "server RSS, loaded (MiB)",
        log_y: false,
        x_si: true,
    };
    chart_or_note(&mut out, out_dir, RSS_SVG, &spec, &hold.rss, "hold")?;
    let title = format!("{kind}: server memory per connection");
    let spec = ChartSpec {
        title: &title,
        x_desc: "connections alive when RSS was read",
        y_desc: "(loaded - baseline RSS) / connections (bytes)",
        log_y: false,
        x_si: true,
    };
    chart_or_note(
        &mut out,
        out_dir,
        BYTES_PER_CONN_SVG,
        &spec,
        &hold.bytes_per_conn,
        "hold bytes_per_conn",
    )?;
    Ok(out)
}

fn chart_or_note(
    out: &mut Outcome,
    out_dir: &Path,
    file: &str,
    spec: &ChartSpec,
    series: &[Series],
    what: &str,
) -> anyhow::Result<()> {
    if series.iter().all(|s| s.points.is_empty()) {
        out.notes
            .push(format!("{file}: no {what} results, chart skipped"));
        return Ok(());
    }
    let path = out_dir.join(file);
    render(&path, spec, series).with_context(|| format!("drawing {}", path.display()))?;
    out.written.push(path);
    Ok(())
}

/// Draws `series` as joined points with a legend into an SVG file.
pub fn render(path: &Path, spec: &ChartSpec, series: &[Series]) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.x).fold(0.0, f64::max);
    let y_max = points().map(|p| p.y).fold(0.0, f64::max);
    let y_min = points().map(|p| p.y).fold(f64::INFINITY, f64::min);
    let x_range = 0.0..nonzero(x_max) * 1.08;
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_hi = x_range.end;
    if spec.log_y && y_min > 0.0 {
        let (lo, hi) = (y_min / 1.5, y_max * 1.5);
        let (llo, lhi) = (lo.ln(), hi.ln());
        let legend = legend_corner(series, |p| (p.x / x_hi, (p.y.ln() - llo) / (lhi - llo)));
        // plotters' own log ticks start at a power of ten, which leaves a
        // range inside one decade with one tick or none.
        let y_range = (lo..hi).log_scale().with_key_points(log_ticks(lo, hi));
        draw(&root, spec, x_range, y_range, series, legend)?;
    } else {
        let y_hi = nonzero(y_max) * 1.12;
        let legend = legend_corner(series, |p| (p.x / x_hi, p.y / y_hi));
        draw(&root, spec, x_range, 0.0..y_hi, series, legend)?;
    }
    root.present()?;
    Ok(())
}

/// Where the legend hides the least: the corner of the plotting area whose
/// legend-sized box holds the fewest points and line samples. `norm` maps a
/// point to 0..=1 on both axes as drawn (y up). Ties go to the upper left.
fn legend_corner(series: &[Series], norm: impl Fn(&Point) -> (f64, f64)) -> SeriesLabelPosition {
    // The legend box, as a fraction of the plotting area (about 830 x 430
    // pixels): 9 pixels per character plus the sample line, 20 per row.
    let longest = series
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    let w = ((longest as f64 * 9.0 + 60.0) / 830.0).min(1.0);
    let h = ((series.len() as f64 * 20.0 + 20.0) / 430.0).min(1.0);
    let mut samples = Vec::new();
    for s in series {
        let pts: Vec<(f64, f64)> = s.points.iter().map(&norm).collect();
        samples.extend(pts.iter().copied());
        for pair in pts.windows(2) {
            let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
            for i in 1..20 {
                let t = f64::from(i) / 20.0;
                samples.push((x0 + (x1 - x0) * t, y0 + (y1 - y0) * t));
            }
        }
    }
    // Points weigh as much as a whole segment's samples.
    let count = |x0: f64, y0: f64| -> usize {
        let inside = |&(x, y): &(f64, f64)| x >= x0 && x <= x0 + w && y >= y0 && y <= y0 + h;
        let points: usize = series
            .iter()
            .flat_map(|s| s.points.iter().map(&norm))
            .filter(inside)
            .count();
        samples.iter().filter(|p| inside(p)).count() + 19 * points
    };
    let corners = [
        (SeriesLabelPosition::UpperLeft, 0.0, 1.0 - h),
        (SeriesLabelPosition::UpperRight, 1.0 - w, 1.0 - h),
        (SeriesLabelPosition::LowerRight, 1.0 - w, 0.0),
        (SeriesLabelPosition::LowerLeft, 0.0, 0.0),
    ];
    let mut best = (SeriesLabelPosition::UpperLeft, usize::MAX);
    for (pos, x0, y0) in corners {
        let n = count(x0, y0);
        if n < best.1 {
            best = (pos, n);
        }
    }
    best.0
}

/// Tick values for a log axis over `lo..=hi`: 1-2-5 per decade, or a
/// finer 1-1.5-2-3-5-7 when that gives fewer than four, or powers of ten
/// only when 1-2-5 gives more than twelve.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let within = |mantissas: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        let mut decade = 10f64.powf(lo.log10().floor());
        while decade <= hi {
            for m in mantissas {
                let v = decade * m;
                if v >= lo && v <= hi {
                    out.push(v);
                }
            }
            decade *= 10.0;
        }
        out
    };
    let ticks = within(&[1.0, 2.0, 5.0]);
    if ticks.len() < 4 {
        within(&[1.0, 1.5, 2.0, 3.0, 5.0, 7.0])
    } else if ticks.len() > 12 {
        within(&[1.0])
    } else {
        ticks
    }
}

fn nonzero(v: f64) -> f64 {
    if v > 0.0 {
        v
    } else {
        1.0
    }
}

fn draw<X, Y>(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    spec: &ChartSpec,
    x: X,
    y: Y,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(spec.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(52)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)?;
    let x_fmt = |v: &f64| if spec.x_si { si(*v) } else { tick(*v) };
    let y_fmt = |v: &f64| tick(*v);
    chart
        .configure_mesh()
        .x_desc(spec.x_desc)
        .y_desc(spec.y_desc)
        .axis_desc_style(("sans-serif", 17))
        .label_style(("sans-serif", 15))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .max_light_lines(4)
        .draw()?;
    for s in series {
        let color = Palette99::pick(s.color).to_rgba();
        // One polyline per run of points on the same curve; the legend
        // entry goes with the first.
        for (i, run) in s.points.chunk_by(|a, b| a.curve == b.curve).enumerate() {
            let line: Vec<(f64, f64)> = run.iter().map(|p| (p.x, p.y)).collect();
            let drawn = chart.draw_series(LineSeries::new(line, color.stroke_width(2)))?;
            if i == 0 {
                drawn.label(s.name.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
        let font = ("sans-serif", 13).into_font().color(&color);
        chart.draw_series(s.points.iter().map(|p| {
            EmptyElement::at((p.x, p.y))
                + Circle::new((0, 0), 4, color.filled())
                + Text::new(p.label.clone(), (6, -14), font.clone())
        }))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Tick text: grouped thousands, a decimal only for small values.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let digits = format!("{:.0}", a);
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if v < 0.0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        trim_zeros(format!("{v:.1}"))
    } else {
        trim_zeros(format!("{v:.2}"))
    }
}

/// Tick text with k / M suffixes: 250000 -> "250k", 1500000 -> "1.5M".
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim_zeros(format!("{:.1}", v / 1e6)))
    } else if a >= 1e3 {
        format!("{}k", trim_zeros(format!("{:.1}", v / 1e3)))
    } else {
        tick(v)
    }
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `bench-client plot`: reads the inputs, writes the charts, prints each
/// file written on stdout and each note on stderr.
pub fn run(args: &PlotArgs) -> anyhow::Result<()> {
    let mut records = Vec::new();
    for input in &args.input {
        let text = std::fs::read_to_string(input)
            .with_context(|| format!("reading {}", input.display()))?;
        records.extend(parse_lines(&text));
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let outcome = plot_all(&records, &args.out_dir)?;
    eprintln!(
        "plot: {} result lines from {} file(s)",
        records.len(),
        args.input.len()
    );
    for note in &outcome.notes {
        eprintln!("plot: {note}");
    }
    for path in &outcome.written {
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pp(target: &str, pairs: u32, window: u32, rate: f64, p99: f64) -> String {
        format!(
            r#"{{"scenario":"pingpong","target":"{target}","transport":"tcp","pairs":{pairs},"window":{window},"payload":64,"msgs_per_s":{rate},"p50_us":10.0,"p99_us":{p99}}}"#
        )
    }

    fn hold(
        target: &str,
        transport: &str,
        conns: u32,
        rss: Option<u64>,
        bpc: Option<u64>,
    ) -> String {
        let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        format!(
            r#"{{"scenario":"hold","target":"{target}","transport":"{transport}","conns":{conns},"up":{conns},"alive_loaded":{conns},"rss_loaded_bytes":{},"bytes_per_conn":{}}}"#,
            opt(rss),
            opt(bpc)
        )
    }

    /// The contents of the SVG's `<text>` elements, trimmed.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("</text>")
            .filter(|chunk| chunk.contains("<text"))
            .filter_map(|chunk| chunk.rsplit('>').next())
            .map(|t| t.trim().to_string())
            .collect()
    }

    /// A directory of its own under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "bench-client-plot-{tag}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn parse_keeps_only_scenario_objects() {
        let text = format!(
            "== pingpong ==\n  delivered msgs/s  1000\n\n[1,2]\n{{\"target\":\"x\"}}\n\
             {{\"scenario\":3}}\n{{broken\n  {}  \n{}\n",
            pp("gateway", 10, 1, 1000.0, 50.0),
            r#"{"scenario":"state","target":"gateway"}"#
        );
        let records = parse_lines(&text);
        assert_eq!(records.len(), 2);
        assert_eq!(scenario(&records[0]), "pingpong");
        assert_eq!(scenario(&records[1]), "state");
    }

    #[test]
    fn pingpong_groups_by_target_one_curve_per_pair_count() {
        let text = [
            pp("gateway", 100, 8, 300_000.0, 900.0),
            pp("nats", 10, 1, 20_000.0, 400.0),
            pp("gateway", 10, 1, 40_000.0, 300.0),
            pp("gateway", 10, 32, 200_000.0, 700.0),
            pp("nats", 100, 8, 250_000.0, 2_000.0),
            pp("gateway", 1000, 1, 100_000.0, 5_000.0),
            r#"{"scenario":"hold","target":"gateway","conns":10}"#.to_string(),
        ]
        .join("\n");
        let g = pingpong_series(&parse_lines(&text));
        assert!(g.skipped.is_empty(), "{:?}", g.skipped);
        let names: Vec<&str> = g.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["gateway", "nats"]);
        let labels: Vec<&str> = g.series[0]
            .points
            .iter()
            .map(|p| p.label.as_str())
            .collect();
        // By pairs, then window; one curve per pair count.
        assert_eq!(labels, ["10×1", "10×32", "100×8", "1000×1"]);
        let curves: Vec<u64> = g.series[0].points.iter().map(|p| p.curve).collect();
        assert_eq!(curves, [10, 10, 100, 1000]);
        assert_eq!(g.series[0].points[0].x, 40_000.0);
        assert_eq!(g.series[0].points[0].y, 300.0);
        assert_eq!(g.series[1].points.len(), 2);
    }

    #[test]
    fn pingpong_skips_runs_that_measured_nothing() {
        let text = [
            pp("gateway", 10, 1, 0.0, 0.0),
            r#"{"scenario":"pingpong","target":"nats","pairs":10}"#.to_string(),
            pp("nats", 10, 1, 1.0, 2.0),
        ]
        .join("\n");
        let g = pingpong_series(&parse_lines(&text));
        assert_eq!(g.skipped.len(), 2, "{:?}", g.skipped);
        assert_eq!(g.series.len(), 1);
        assert_eq!(g.series[0].name, "nats");
    }

    #[test]
    fn names_show_what_varies_within_a_target() {
        let ws = pp("gateway", 10, 1, 1.0, 2.0).replace("\"tcp\"", "\"ws\"");
        let big = pp("nats", 10, 1, 1.0, 2.0).replace("\"payload\":64", "\"payload\":1024");
        let text = [
            pp("gateway", 10, 1, 1.0, 2.0),
            ws,
            pp("nats", 10, 1, 1.0, 2.0),
            big,
            pp("mosquitto", 10, 1, 1.0, 2.0),
        ]
        .join("\n");
        let g = pingpong_series(&parse_lines(&text));
        let names: Vec<&str> = g.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "gateway (tcp)",
                "gateway (ws)",
                "nats 64 B",
                "nats 1024 B",
                "mosquitto"
            ]
        );
    }

    #[test]
    fn hold_series_in_mib_with_bytes_per_conn() {
        let text = [
            hold(
                "gateway",
                "tcp",
                19_000,
                Some(60 * 1024 * 1024),
                Some(3_000),
            ),
            hold("gateway", "tcp", 1_000, Some(8 * 1024 * 1024), Some(3_100)),
            hold("gateway", "tcp", 5_000, None, None),
            hold("nats", "tcp", 1_000, Some(20 * 1024 * 1024), None),
        ]
        .join("\n");
        let g = hold_series(&parse_lines(&text));
        assert_eq!(g.skipped.len(), 1, "{:?}", g.skipped);
        assert_eq!(g.rss.len(), 2);
        assert_eq!(g.rss[0].name, "gateway: 3000 B/conn at 19000");
        assert_eq!(g.rss[1].name, "nats");
        let xs: Vec<f64> = g.rss[0].points.iter().map(|p| p.x).collect();
        assert_eq!(xs, [1_000.0, 19_000.0]);
        assert_eq!(g.rss[0].points[1].y, 60.0);
        assert_eq!(g.bytes_per_conn.len(), 1);
        assert_eq!(g.bytes_per_conn[0].name, "gateway");
        assert_eq!(g.bytes_per_conn[0].points[0].y, 3_100.0);
    }

    #[test]
    fn hold_and_soak_of_one_target_are_apart() {
        let text = [
            hold("gateway", "tcp", 1_000, Some(8 * 1024 * 1024), Some(3_000)),
            hold("gateway", "tcp", 1_000, Some(9 * 1024 * 1024), Some(4_000))
                .replace("\"hold\"", "\"soak\""),
            hold("gateway", "ws", 1_000, Some(9 * 1024 * 1024), None),
            hold("nats", "tcp", 1_000, Some(20 * 1024 * 1024), None),
        ]
        .join("\n");
        let g = hold_series(&parse_lines(&text));
        let names: Vec<&str> = g.bytes_per_conn.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["gateway (tcp, hold)", "gateway (tcp, soak)"]);
        let names: Vec<&str> = g.rss.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "gateway (tcp, hold): 3000 B/conn at 1000",
                "gateway (tcp, soak): 4000 B/conn at 1000",
                "gateway (ws, hold)",
                "nats"
            ]
        );
    }

    #[test]
    fn hold_uses_connections_alive_when_rss_was_read() {
        let text = hold("gateway", "tcp", 1000, Some(MIB as u64), Some(100))
            .replace("\"alive_loaded\":1000", "\"alive_loaded\":990");
        let g = hold_series(&parse_lines(&text));
        assert_eq!(g.rss[0].points[0].x, 990.0);
    }

    #[test]
    fn ticks() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(250.0), "250");
        assert_eq!(tick(12_345.0), "12,345");
        assert_eq!(tick(1_000_000.0), "1,000,000");
        assert_eq!(si(250_000.0), "250k");
        assert_eq!(si(1_500_000.0), "1.5M");
        assert_eq!(si(900.0), "900");
    }

    #[test]
    fn renders_svgs_with_series_names_and_titles() {
        let dir = TempDir::new("render");
        let text = [
            pp("gateway", 10, 1, 40_000.0, 300.0),
            pp("gateway", 100, 8, 300_000.0, 900.0),
            pp("nats", 10, 1, 20_000.0, 400.0),
            pp("nats", 100, 8, 250_000.0, 2_000.0),
            hold("gateway", "tcp", 1_000, Some(8 * 1024 * 1024), Some(3_100)),
            hold(
                "gateway",
                "tcp",
                19_000,
                Some(60 * 1024 * 1024),
                Some(3_000),
            ),
        ]
        .join("\n");
        let outcome = plot_all(&parse_lines(&text), &dir.0).unwrap();
        assert_eq!(outcome.written.len(), 3, "{:?}", outcome.notes);
        let svg = std::fs::read_to_string(dir.0.join(THROUGHPUT_SVG)).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        let texts = svg_texts(&svg);
        for want in [
            "gateway",
            "nats",
            "10×1",
            "100×8",
            "p99 round trip (µs, log scale)",
            "delivered messages/s (both directions)",
            "300k",
            "1,000",
        ] {
            assert!(
                texts.iter().any(|t| t == want),
                "{want:?} missing from {THROUGHPUT_SVG}: {texts:?}"
            );
        }
        let texts = svg_texts(&std::fs::read_to_string(dir.0.join(RSS_SVG)).unwrap());
        assert!(
            texts.contains(&"gateway: 3000 B/conn at 19000".to_string()),
            "{texts:?}"
        );
        assert!(
            texts.contains(&"server RSS, loaded (MiB)".to_string()),
            "{texts:?}"
        );
        let svg = std::fs::read_to_string(dir.0.join(BYTES_PER_CONN_SVG)).unwrap();
        let texts = svg_texts(&svg);
        assert!(texts.contains(&"3100 B".to_string()), "{texts:?}");
        assert!(texts.contains(&"gateway".to_string()), "{texts:?}");
    }

    #[test]
    fn legend_goes_where_the_data_is_not() {
        let series = |pts: &[(f64, f64)]| {
            vec![Series {
                name: "gateway".into(),
                color: 0,
                points: pts
                    .iter()
                    .map(|&(x, y)| Point {
                        x,
                        y,
                        label: String::new(),
                        curve: 0,
                    })
                    .collect(),
            }]
        };
        let id = |p: &Point| (p.x, p.y);
        // Rising line from lower left to upper right: upper left is free.
        let rising = series(&[(0.05, 0.05), (0.5, 0.5), (0.95, 0.95)]);
        assert!(matches!(
            legend_corner(&rising, id),
            SeriesLabelPosition::UpperLeft
        ));
        // Flat line along the top: a lower corner.
        let top = series(&[(0.05, 0.97), (0.5, 0.96), (0.95, 0.95)]);
        assert!(matches!(
            legend_corner(&top, id),
            SeriesLabelPosition::LowerRight | SeriesLabelPosition::LowerLeft
        ));
    }

    #[test]
    fn log_ticks_cover_the_range() {
        assert_eq!(log_ticks(150.0, 3_000.0), [200.0, 500.0, 1_000.0, 2_000.0]);
        // Inside one decade: the finer set.
        assert_eq!(log_ticks(180.0, 800.0), [200.0, 300.0, 500.0, 700.0]);
        // Five decades: powers of ten only.
        assert_eq!(
            log_ticks(5.0, 2_000_000.0),
            [10.0, 100.0, 1e3, 1e4, 1e5, 1e6]
        );
    }

    #[test]
    fn charts_without_data_are_skipped_with_a_note() {
        let dir = TempDir::new("empty");
        let text = pp("nats", 10, 1, 20_000.0, 400.0);
        let outcome = plot_all(&parse_lines(&text), &dir.0).unwrap();
        assert_eq!(outcome.written, [dir.0.join(THROUGHPUT_SVG)]);
        assert_eq!(outcome.notes.len(), 2, "{:?}", outcome.notes);
        assert!(!dir.0.join(RSS_SVG).exists());
        let outcome = plot_all(&[], &dir.0).unwrap();
        assert!(outcome.written.is_empty());
        assert_eq!(outcome.notes.len(), 3);
    }
}
