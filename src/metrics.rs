//! What `/metrics` and `/healthz` report, shared by every thread.
//!
//! Connection shards count in plain integers on their own thread (the hot
//! path pays an add, no atomic) and publish a copy into their own slot here
//! once per timer tick; the service shard updates its figures as it commits.
//! A scrape, served by whichever shard accepted the HTTP request, only loads
//! atomics. Nothing is locked and no slot is written by two threads.
//!
//! The text is the Prometheus exposition format (version 0.0.4), written by
//! hand: the registry crates keep their own locked registries and would sit
//! beside this design rather than in it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// A shard that has not ticked for this long is reported dead by `/healthz`.
pub const SHARD_STALL_MS: u64 = 2_000;

/// Upper bounds (microseconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000,
];

/// Upper bounds of the store batch-size histogram's buckets (rows).
pub const BATCH_BUCKETS: [u64; 8] = [1, 8, 32, 128, 512, 2048, 8192, 32768];

/// Listener kinds connections are counted by.
pub const TRANSPORTS: [&str; 4] = ["tcp", "ws", "tls", "wss"];

/// A histogram with fixed buckets, observed by one thread at a time.
pub struct Histogram<const N: usize> {
    bounds: [u64; N],
    /// Observations at most `bounds[i]` (not cumulative); the last slot
    /// counts those above every bound.
    buckets: [AtomicU64; 16],
    sum: AtomicU64,
    count: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub fn new(bounds: [u64; N]) -> Self {
        assert!(N < 16, "at most 15 buckets");
        Histogram {
            bounds,
            buckets: Default::default(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Adds `n` observations of `value`.
    pub fn observe_n(&self, value: u64, n: u64) {
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(N);
        self.buckets[i].fetch_add(n, Relaxed);
        self.sum.fetch_add(value.saturating_mul(n), Relaxed);
        self.count.fetch_add(n, Relaxed);
    }

    pub fn observe(&self, value: u64) {
        self.observe_n(value, 1);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines; `scale` divides the
    /// bounds and the sum (1e6 turns microseconds into seconds).
    fn render(&self, out: &mut String, name: &str, labels: &str, scale: f64) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let le = *bound as f64 / scale;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[N].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum.load(Relaxed) as f64 / scale;
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(out, "{name}_count{braced} {}", self.count.load(Relaxed));
    }
}

/// One connection shard's published figures.
pub struct ShardSlot {
    /// The shard clock at its last tick, plus one (0: never ticked).
    pub ticked_ms: AtomicU64,
    /// Counters by name, in the order of [`crate::shard::state::Stats::counters`].
    pub counters: Box<[AtomicU64]>,
    /// Open connections by transport ([`TRANSPORTS`]).
    pub open: [AtomicU64; 4],
    pub frames_in: Box<[AtomicU64]>,
    pub frames_out: Box<[AtomicU64]>,
    pub errors: Box<[AtomicU64]>,
    /// DATA bytes in flight from this shard to each other shard.
    pub channel_bytes: Box<[AtomicU64]>,
    /// From the read that brought a DATA frame to the write that sent it on.
    pub routing_latency_us: Histogram<12>,
}

/// The service shard's figures.
pub struct ServiceSlot {
    pub store_ok: AtomicBool,
    /// State writes waiting or being committed.
    pub queued_writes: AtomicU64,
    pub committed_rows: AtomicU64,
    pub failed_commits: AtomicU64,
    pub batch_rows: Histogram<8>,
    pub commit_latency_us: Histogram<12>,
    pub cluster: ClusterSlot,
}

/// The cluster link's figures (reported only when `[cluster]` is on).
#[derive(Default)]
pub struct ClusterSlot {
    pub on: AtomicBool,
    pub connected: AtomicBool,
    pub nodes_alive: AtomicU64,
    pub data_sent: AtomicU64,
    pub data_received: AtomicU64,
    pub bounced: AtomicU64,
    pub lookups: AtomicU64,
    pub directory_errors: AtomicU64,
    pub bad_messages: AtomicU64,
}

pub struct Registry {
    started: Instant,
    pub shards: Box<[ShardSlot]>,
    pub service: ServiceSlot,
    counter_names: &'static [&'static str],
}

fn zeros(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Registry {
    pub fn new(shards: usize, counter_names: &'static [&'static str]) -> Arc<Registry> {
        let shards = (0..shards)
            .map(|_| ShardSlot {
                ticked_ms: AtomicU64::new(0),
                counters: zeros(counter_names.len()),
                open: Default::default(),
                frames_in: zeros(256),
                frames_out: zeros(256),
                errors: zeros(crate::proto::ErrorCode::ALL.len() + 1),
                channel_bytes: zeros(shards),
                routing_latency_us: Histogram::new(LATENCY_BUCKETS_US),
            })
            .collect();
        Arc::new(Registry {
            started: Instant::now(),
            shards,
            service: ServiceSlot {
                store_ok: AtomicBool::new(false),
                queued_writes: AtomicU64::new(0),
                committed_rows: AtomicU64::new(0),
                failed_commits: AtomicU64::new(0),
                batch_rows: Histogram::new(BATCH_BUCKETS),
                commit_latency_us: Histogram::new(LATENCY_BUCKETS_US),
                cluster: ClusterSlot::default(),
            },
            counter_names,
        })
    }

    /// Milliseconds since the registry was made (the clock shards publish
    /// their ticks in).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Shards whose last tick is recent.
    pub fn shards_alive(&self) -> usize {
        let now = self.now_ms();
        self.shards
            .iter()
            .filter(|s| {
                let t = s.ticked_ms.load(Relaxed);
                t > 0 && now.saturating_sub(t - 1) <= SHARD_STALL_MS
            })
            .count()
    }

    /// `/healthz`: healthy when every shard ticks and the store answers.
    pub fn health(&self) -> (bool, String) {
        let alive = self.shards_alive();
        let store = self.service.store_ok.load(Relaxed);
        let ok = alive == self.shards.len() && store;
        let body = serde_json::json!({
            "status": if ok { "ok" } else { "unhealthy" },
            "shards": self.shards.len(),
            "shards_alive": alive,
            "store": if store { "ok" } else { "unavailable" },
            "uptime_s": self.started.elapsed().as_secs(),
        });
        (ok, body.to_string())
    }

    /// `/metrics` in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let help = |out: &mut String, name: &str, kind: &str, text: &str| {
            let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
        };
        help(
            &mut out,
            "gateway_connections",
            "gauge",
            "Open connections by shard and transport.",
        );
        for (i, s) in self.shards.iter().enumerate() {
            for (t, name) in TRANSPORTS.iter().enumerate() {
                let v = s.open[t].load(Relaxed);
                let _ = writeln!(
                    out,
                    "gateway_connections{{shard=\"{i}\",transport=\"{name}\"}} {v}"
                );
            }
        }
        for (c, name) in self.counter_names.iter().enumerate() {
            let metric = format!("gateway_{name}_total");
            help(
                &mut out,
                &metric,
                "counter",
                &format!("Shard counter {name}."),
            );
            for (i, s) in self.shards.iter().enumerate() {
                let v = s.counters[c].load(Relaxed);
                let _ = writeln!(out, "{metric}{{shard=\"{i}\"}} {v}");
            }
        }
        for (metric, what, pick) in [
            ("gateway_frames_in_total", "Frames received, by kind.", 0),
            ("gateway_frames_out_total", "Frames sent, by kind.", 1),
        ] {
            help(&mut out, metric, "counter", what);
            for k in crate::proto::Kind::ALL {
                let v: u64 = self
                    .shards
                    .iter()
                    .map(|s| {
                        let by_kind = if pick == 0 {
                            &s.frames_in
                        } else {
                            &s.frames_out
                        };
                        by_kind[k as usize].load(Relaxed)
                    })
                    .sum();
                let _ = writeln!(out, "{metric}{{kind=\"{}\"}} {v}", k.name());
            }
        }
        help(
            &mut out,
            "gateway_errors_total",
            "counter",
            "ERROR frames sent, by code.",
        );
        for code in crate::proto::ErrorCode::ALL {
            let v: u64 = self
                .shards
                .iter()
                .map(|s| s.errors[code as usize].load(Relaxed))
                .sum();
            let _ = writeln!(out, "gateway_errors_total{{code=\"{}\"}} {v}", code.name());
        }
        help(
            &mut out,
            "gateway_channel_bytes",
            "gauge",
            "DATA bytes in flight between shards (from, to).",
        );
        for (i, s) in self.shards.iter().enumerate() {
            for (j, b) in s.channel_bytes.iter().enumerate() {
                if i != j {
                    let v = b.load(Relaxed);
                    let _ = writeln!(out, "gateway_channel_bytes{{from=\"{i}\",to=\"{j}\"}} {v}");
                }
            }
        }
        help(
            &mut out,
            "gateway_routing_latency_seconds",
            "histogram",
            "Time a DATA frame spends in the gateway, from its read to its write.",
        );
        for (i, s) in self.shards.iter().enumerate() {
            s.routing_latency_us.render(
                &mut out,
                "gateway_routing_latency_seconds",
                &format!("shard=\"{i}\""),
                1e6,
            );
        }
        let sv = &self.service;
        let mut scalars: Vec<(&str, &str, &str, u64)> = vec![
            (
                "gateway_store_up",
                "gauge",
                "1 when the state store answers.",
                u64::from(sv.store_ok.load(Relaxed)),
            ),
            (
                "gateway_store_queued_writes",
                "gauge",
                "State writes waiting or being committed.",
                sv.queued_writes.load(Relaxed),
            ),
            (
                "gateway_store_committed_rows_total",
                "counter",
                "State rows committed.",
                sv.committed_rows.load(Relaxed),
            ),
            (
                "gateway_store_failed_commits_total",
                "counter",
                "Commits that failed (and were retried or refused).",
                sv.failed_commits.load(Relaxed),
            ),
            (
                "gateway_process_resident_memory_bytes",
                "gauge",
                "Resident memory of the gateway process.",
                resident_bytes(),
            ),
            (
                "gateway_uptime_seconds",
                "gauge",
                "Seconds since the gateway started.",
                self.started.elapsed().as_secs(),
            ),
        ];
        let c = &sv.cluster;
        if c.on.load(Relaxed) {
            scalars.extend([
                (
                    "gateway_cluster_connected",
                    "gauge",
                    "1 while the link to NATS is up.",
                    u64::from(c.connected.load(Relaxed)),
                ),
                (
                    "gateway_cluster_nodes_alive",
                    "gauge",
                    "Other nodes heard from within node_timeout_ms.",
                    c.nodes_alive.load(Relaxed),
                ),
                (
                    "gateway_cluster_data_sent_total",
                    "counter",
                    "DATA frames sent to other nodes.",
                    c.data_sent.load(Relaxed),
                ),
                (
                    "gateway_cluster_data_received_total",
                    "counter",
                    "DATA frames received from other nodes.",
                    c.data_received.load(Relaxed),
                ),
                (
                    "gateway_cluster_bounced_total",
                    "counter",
                    "DATA frames that could not reach another node's address.",
                    c.bounced.load(Relaxed),
                ),
                (
                    "gateway_cluster_lookups_total",
                    "counter",
                    "Directory lookups.",
                    c.lookups.load(Relaxed),
                ),
                (
                    "gateway_cluster_directory_errors_total",
                    "counter",
                    "Directory reads and writes that failed.",
                    c.directory_errors.load(Relaxed),
                ),
                (
                    "gateway_cluster_bad_messages_total",
                    "counter",
                    "Messages on the cluster's subjects that did not parse.",
                    c.bad_messages.load(Relaxed),
                ),
            ]);
        }
        for (name, kind, text, value) in scalars {
            help(&mut out, name, kind, text);
            let _ = writeln!(out, "{name} {value}");
        }
        help(
            &mut out,
            "gateway_store_batch_rows",
            "histogram",
            "State rows per committed batch.",
        );
        sv.batch_rows
            .render(&mut out, "gateway_store_batch_rows", "", 1.0);
        help(
            &mut out,
            "gateway_store_commit_seconds",
            "histogram",
            "Time one batch commit took.",
        );
        sv.commit_latency_us
            .render(&mut out, "gateway_store_commit_seconds", "", 1e6);
        out
    }
}

/// The process's resident memory, from /proc/self/statm (0 if unreadable).
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let h = Histogram::new([10, 100]);
        h.observe(5);
        h.observe(10);
        h.observe_n(50, 3);
        h.observe(1_000);
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"1\"", 1.0);
        assert!(out.contains("x_bucket{a=\"1\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"1\",le=\"100\"} 5\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"1\",le=\"+Inf\"} 6\n"), "{out}");
        assert!(out.contains("x_sum{a=\"1\"} 1165\n"), "{out}");
        assert!(out.contains("x_count{a=\"1\"} 6\n"), "{out}");
    }

    #[test]
    fn health_needs_every_shard_ticking_and_the_store() {
        let r = Registry::new(2, &["accepted"]);
        assert!(!r.health().0, "nothing ticked yet");
        for s in r.shards.iter() {
            s.ticked_ms.store(r.now_ms() + 1, Relaxed);
        }
        assert!(!r.health().0, "store not up");
        r.service.store_ok.store(true, Relaxed);
        let (ok, body) = r.health();
        assert!(ok, "{body}");
        assert!(body.contains("\"shards_alive\":2"), "{body}");
    }

    #[test]
    fn render_names_every_family_once() {
        let r = Registry::new(2, &["accepted", "dst_offline"]);
        r.shards[1].counters[0].store(7, Relaxed);
        r.shards[0].open[2].store(3, Relaxed);
        let text = r.render();
        assert!(
            text.contains("gateway_accepted_total{shard=\"1\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("gateway_connections{shard=\"0\",transport=\"tls\"} 3\n"));
        assert!(
            text.contains("gateway_frames_in_total{kind=\"data\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("gateway_errors_total{code=\"dst_offline\"} 0\n"));
        assert!(text.contains("gateway_channel_bytes{from=\"0\",to=\"1\"} 0\n"));
        assert!(resident_bytes() > 0);
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let n = types.len();
        types.dedup();
        assert_eq!(types.len(), n, "a family declared twice");
    }
}
