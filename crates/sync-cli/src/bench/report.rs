//! Figures, medians and spreads, targets, and the JSON and Markdown renderings.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

/// Records (or rows) moved per second of sync.
pub const RECORDS_PER_S: &str = "recordsPerS";
/// The raw SQLite ceiling measured in the same run, rows per second.
pub const CEILING_PER_S: &str = "ceilingPerS";
/// `RECORDS_PER_S / CEILING_PER_S`.
pub const RATIO: &str = "ratioToCeiling";
/// The same rows inserted many per statement, as the stores write them, rows per second.
pub const BATCHED_CEILING_PER_S: &str = "batchedCeilingPerS";
/// `RECORDS_PER_S / BATCHED_CEILING_PER_S`.
pub const BATCHED_RATIO: &str = "ratioToBatchedCeiling";
/// Request and response body bytes per record.
pub const WIRE_BYTES: &str = "wireBytesPerRecord";
/// Rounds run.
pub const ROUNDS: &str = "rounds";
/// Median round, ms.
pub const P50_MS: &str = "roundP50Ms";
/// 99th-percentile round, ms.
pub const P99_MS: &str = "roundP99Ms";
/// Peak RSS of the node process (the larger of two nodes in scenario 5), MiB.
pub const NODE_RSS: &str = "nodePeakRssMiB";
/// Peak RSS of the server process, MiB.
pub const SERVER_RSS: &str = "serverPeakRssMiB";
/// End-to-end throughput of a large blob (push then pull), MB/s (10^6 bytes).
pub const MB_PER_S: &str = "mbPerS";
/// Node -> server leg, MB/s.
pub const PUSH_MB_PER_S: &str = "pushMbPerS";
/// Server -> second node leg, MB/s.
pub const PULL_MB_PER_S: &str = "pullMbPerS";
/// The disk's synced write rate in the same run (the blob's size written and fsynced), MB/s.
pub const DISK_MB_PER_S: &str = "diskMbPerS";

/// One run's figures, by name.
pub type Run = BTreeMap<&'static str, f64>;

/// The median of several runs and their spread.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Median (the mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stat {
    /// The statistic of `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// The `p`-quantile (0..=1) of `values` by the nearest-rank method.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (p * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// Whether a target was met, and by what figure.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Met.
    pub met: bool,
    /// The figures compared.
    pub detail: String,
}

/// One scenario (or one size of scenario 4): its runs and their summary.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scenario {
    /// Issue 7's number of the scenario.
    pub number: u8,
    /// What it does.
    pub title: String,
    /// Records (or rows, or bytes for scenario 5) moved per run.
    pub items: u64,
    /// Every run.
    pub runs: Vec<Run>,
    /// Medians and spreads of the runs' figures.
    pub summary: BTreeMap<&'static str, Stat>,
    /// The target, in words.
    pub target: String,
    /// Whether the target was met (filled in once every scenario ran).
    pub verdict: Option<Verdict>,
}

impl Scenario {
    /// A scenario summarised from its runs.
    pub fn new(number: u8, title: String, items: u64, runs: Vec<Run>, target: &str) -> Self {
        let mut summary = BTreeMap::new();
        let names: Vec<&'static str> = runs.iter().flat_map(|r| r.keys().copied()).collect();
        for name in names {
            let values: Vec<f64> = runs.iter().filter_map(|r| r.get(name).copied()).collect();
            if let Some(s) = Stat::of(&values) {
                summary.insert(name, s);
            }
        }
        Self {
            number,
            title,
            items,
            runs,
            summary,
            target: target.into(),
            verdict: None,
        }
    }

    /// The median of a figure.
    pub fn median(&self, name: &str) -> Option<f64> {
        self.summary.get(name).map(|s| s.median)
    }
}

/// Issue 3's storage figures: a no-op round's storage cost and the apply rate.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageReport {
    /// The small and the large stored-record counts compared.
    pub sizes: (u64, u64),
    /// `ChannelData::coverage` of the Drive channel, µs, at each size.
    pub coverage_us: (Stat, Stat),
    /// A requester round against an in-process responder with nothing to do, µs.
    pub round_us: (Stat, Stat),
    /// The same two figures with both sides on PostgreSQL, when a server was given.
    pub postgres: Option<BackendStorage>,
    /// Why the PostgreSQL figures are missing, when they are.
    pub postgres_not_measured: Option<String>,
    /// `RecordStore::apply` of 1000-record pages into an empty store, records/s.
    pub apply_per_s: Stat,
    /// Plain sqlx inserts of the same rows, 1000 per transaction, rows/s.
    pub raw_per_s: Stat,
    /// `apply / raw`, per run.
    pub apply_ratio: Stat,
    /// The same rows, many per `INSERT`, 1000 per transaction, rows/s.
    pub batched_per_s: Stat,
}

/// Issue 3's no-op storage cost on one more backend, at the same two sizes.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStorage {
    /// `ChannelData::coverage` of the Drive channel, µs, at each size.
    pub coverage_us: (Stat, Stat),
    /// A requester round against an in-process responder with nothing to do, µs.
    pub round_us: (Stat, Stat),
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// Logical CPUs (`nproc`).
    pub cpus: usize,
    /// CPU model.
    pub cpu_model: String,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// `rustc --version`, when a rustc is on the path.
    pub rustc: String,
    /// Kernel release.
    pub kernel: String,
    /// `/proc/loadavg` when the suite started and when it ended: other work on the machine
    /// shows here (the figures are CPU-bound on two cores).
    pub load_average: (String, String),
}

impl Machine {
    /// The 1-, 5- and 15-minute load averages.
    pub fn load_average() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Reads `/proc` and asks `rustc`; `load_before` is the load average at the start.
    pub fn detect(load_before: String) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown (no rustc on the PATH)".into());
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib: memory_kib / (1024.0 * 1024.0),
            rustc,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load_average: (load_before, Self::load_average()),
        }
    }
}

/// Everything one `bench` invocation measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Results {
    /// The command that produced it.
    pub command: String,
    /// Whether these are the `--quick` sizes.
    pub quick: bool,
    /// Runs per scenario.
    pub runs: usize,
    /// Items per round (`None`: the engine's default, 1000).
    pub page_limit: Option<usize>,
    /// The date (UTC) of the run.
    pub date: String,
    /// Wall time of the whole suite, seconds (seeding included).
    pub duration_s: f64,
    /// Where the figures come from.
    pub machine: Machine,
    /// The scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Issue 3's storage ratios.
    pub storage: Option<StorageReport>,
    /// Issue 8's load runs, one per server setup.
    pub load: Vec<super::load::LoadReport>,
    /// Why a load setup did not run, when one was left out.
    pub load_not_measured: Option<String>,
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A figure with `decimals` decimals (thousands separators from 10,000 up).
fn fmt(v: f64, decimals: usize) -> String {
    if v.abs() >= 10_000.0 {
        thousands(v)
    } else {
        format!("{v:.decimals$}")
    }
}

/// `median (min–max)`, or `median` alone when every run agreed.
fn stat(s: Option<&Stat>, decimals: usize) -> String {
    match s {
        None => "–".into(),
        Some(s) if fmt(s.min, decimals) == fmt(s.max, decimals) => fmt(s.median, decimals),
        Some(s) => format!(
            "{} ({}–{})",
            fmt(s.median, decimals),
            fmt(s.min, decimals),
            fmt(s.max, decimals)
        ),
    }
}

impl Results {
    /// The machine, the date and the command, as the first line of a section.
    fn machine_line(&self) -> String {
        let m = &self.machine;
        format!(
            "Run on {}: {} CPUs ({}), {:.1} GiB memory, Linux {}, {}, release build; load \
             average {} at the start and {} at the end. Command: `{}`",
            self.date,
            m.cpus,
            m.cpu_model,
            m.memory_gib,
            m.kernel,
            m.rustc,
            m.load_average.0,
            m.load_average.1,
            self.command,
        )
    }

    /// The Markdown section of issue 8's load runs (empty when none ran or was skipped).
    pub fn load_markdown(&self) -> String {
        let mut md = String::new();
        if self.load.is_empty() && self.load_not_measured.is_none() {
            return md;
        }
        let _ = writeln!(
            md,
            "{} ({:.0} s in all, including writing the data).\n",
            self.machine_line(),
            self.duration_s
        );
        md.push_str(
            "| setup | nodes | per node | write s (slowest) | items/s (both phases) | round p50 / p99 ms \
             | failed requests | converged | peak RSS nodes median / max MiB | peak RSS servers MiB \
             | requests served | disk per node MiB |\n|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|\n",
        );
        for r in &self.load {
            let _ = writeln!(
                md,
                "| {} | {} | {} records with 256-byte blobs, {} rows | {:.1} | {} | {:.1} / {:.1} | {} | {} | {:.0} / {:.0} | {} | {} | {:.0} |",
                r.servers_on,
                r.nodes,
                thousands(r.records_per_node as f64),
                thousands(r.rows_per_node as f64),
                r.write_s,
                thousands(r.items_per_s),
                r.p50_ms,
                r.p99_ms,
                if r.failed_requests == 0 {
                    "0".to_string()
                } else {
                    format!("**{}**", r.failed_requests)
                },
                if r.converged { "yes" } else { "**no**" },
                r.node_rss_mib.0,
                r.node_rss_mib.1,
                r.servers
                    .iter()
                    .map(|s| format!("{:.0}", s.peak_rss_mib))
                    .collect::<Vec<_>>()
                    .join(" / "),
                r.servers
                    .iter()
                    .map(|s| thousands(s.requests as f64))
                    .collect::<Vec<_>>()
                    .join(" / "),
                r.node_home_mib,
            );
        }
        if let Some(why) = &self.load_not_measured {
            let _ = writeln!(
                md,
                "| two servers on PostgreSQL + S3 | – | **not measured**: {why} | – | – | – | – | – | – | – | – | – |"
            );
        }
        if !self.load.is_empty() {
            md.push_str(
                "\n| setup | phase | wall s | items | items/s | rounds | round p50 / p99 ms | failed rounds \
                 | failed items | halted origins |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for r in &self.load {
                for (name, p) in [
                    ("1: all sync until idle", &r.phase1),
                    ("2: all sync again", &r.phase2),
                ] {
                    let _ = writeln!(
                        md,
                        "| {} | {name} | {:.1} | {} | {} | {} | {:.1} / {:.1} | {} | {} | {} |",
                        r.servers_on,
                        p.wall_s,
                        thousands(p.items as f64),
                        thousands(p.items_per_s),
                        thousands(p.rounds as f64),
                        p.p50_ms,
                        p.p99_ms,
                        p.exchange_errors,
                        p.failed_items,
                        p.halted,
                    );
                }
            }
            for r in self.load.iter().filter(|r| !r.problems.is_empty()) {
                let _ = writeln!(
                    md,
                    "\nNot converged on {}: {}",
                    r.servers_on,
                    r.problems.join("; ")
                );
            }
            for r in &self.load {
                let errors: Vec<String> = r
                    .servers
                    .iter()
                    .filter(|s| !s.error_statuses.is_empty())
                    .map(|s| format!("{:?}", s.error_statuses))
                    .collect();
                if !errors.is_empty() {
                    let _ = writeln!(
                        md,
                        "\nError statuses served on {}: {}",
                        r.servers_on,
                        errors.join("; ")
                    );
                }
            }
        }
        md
    }

    /// The Markdown section `cargo xtask bench` puts in docs/benchmarks.md (empty when only
    /// the load scenario ran).
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        if self.scenarios.is_empty() && self.storage.is_none() {
            return md;
        }
        let _ = writeln!(
            md,
            "{} ({} run(s) per scenario, {:.0} s including seeding). Figures are medians with \
             the spread (min–max) in brackets.\n",
            self.machine_line(),
            self.runs,
            self.duration_s
        );
        if !self.scenarios.is_empty() {
            md.push_str(
                "| # | scenario | items | records/s | × raw ceiling | × batched ceiling | \
                 wire B/record | rounds | round p50 / p99 ms | peak RSS node / server MiB | \
                 target | met |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
            );
        }
        for s in &self.scenarios {
            let g = |name| s.summary.get(name);
            let throughput = if s.summary.contains_key(MB_PER_S) {
                format!("{} MB/s", stat(g(MB_PER_S), 0))
            } else {
                stat(g(RECORDS_PER_S), 0)
            };
            let latency = match (g(P50_MS), g(P99_MS)) {
                (Some(_), Some(_)) => format!("{} / {}", stat(g(P50_MS), 2), stat(g(P99_MS), 2)),
                _ => "–".into(),
            };
            let items = if s.summary.contains_key(MB_PER_S) {
                format!("{} MiB", s.items >> 20)
            } else {
                thousands(s.items as f64)
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
                s.number,
                s.title,
                items,
                throughput,
                stat(g(RATIO), 2),
                stat(g(BATCHED_RATIO), 2),
                stat(g(WIRE_BYTES), 0),
                stat(g(ROUNDS), 0),
                latency,
                stat(g(NODE_RSS), 0),
                stat(g(SERVER_RSS), 0),
                s.target,
                match &s.verdict {
                    None => "–".to_string(),
                    Some(v) if v.met => format!("yes ({})", v.detail),
                    Some(v) => format!("**no** ({})", v.detail),
                },
            );
        }
        let ceilings: Vec<_> = self
            .scenarios
            .iter()
            .filter(|s| s.summary.contains_key(CEILING_PER_S))
            .collect();
        if !ceilings.is_empty() {
            md.push_str(
                "\nRaw SQLite ceilings measured in the same run: sqlx inserts of the scenario's \
                 rows into an empty database with the stores' schema and settings, 1000 rows per \
                 transaction; *raw* is one prepared `INSERT` per row (the issue's plain inserts), \
                 *batched* 32 records (64 app rows) per `INSERT`, as the stores now write:\n\n\
                 | # | rows | raw rows/s | batched rows/s |\n|---|---|---:|---:|\n",
            );
            for s in ceilings {
                let _ = writeln!(
                    md,
                    "| {} | {} × {} | {} | {} |",
                    s.number,
                    thousands(s.items as f64),
                    if s.number == 6 {
                        "app row"
                    } else {
                        "shared record"
                    },
                    stat(s.summary.get(CEILING_PER_S), 0),
                    stat(s.summary.get(BATCHED_CEILING_PER_S), 0)
                );
            }
        }
        if let Some(large) = self
            .scenarios
            .iter()
            .find(|s| s.summary.contains_key(PUSH_MB_PER_S))
        {
            let _ = writeln!(
                md,
                "\nScenario 5 legs: node -> server {} MB/s, server -> second node {} MB/s \
                 (the end-to-end figure above is the blob's size over both legs' time). The \
                 disk took synced writes at {} MB/s in the same runs (the blob's size \
                 written and fsynced before each run): each leg leaves a durable copy, so \
                 two of them bound the end-to-end figure at about half of that.",
                stat(large.summary.get(PUSH_MB_PER_S), 0),
                stat(large.summary.get(PULL_MB_PER_S), 0),
                stat(large.summary.get(DISK_MB_PER_S), 0)
            );
        }
        if let Some(st) = &self.storage {
            let (small, large) = st.sizes;
            let ratio = |pair: &(Stat, Stat)| pair.1.median / pair.0.median;
            let _ = writeln!(
                md,
                "\nIssue 3 (storage, measured against the stores through `sync-core`, no HTTP; \
                 both sides on the same backend):\n\n\
                 | backend | figure | {} records | {} records | ratio | target |\n\
                 |---|---|---:|---:|---:|---|\n\
                 | SQLite | `ChannelData::coverage`, µs | {} | {} | {:.2} | ≤ 1.5 |\n\
                 | SQLite | no-op requester round against an in-process responder, µs | {} | {} | {:.2} | ≤ 1.5 |",
                thousands(small as f64),
                thousands(large as f64),
                stat(Some(&st.coverage_us.0), 0),
                stat(Some(&st.coverage_us.1), 0),
                ratio(&st.coverage_us),
                stat(Some(&st.round_us.0), 0),
                stat(Some(&st.round_us.1), 0),
                ratio(&st.round_us),
            );
            match (&st.postgres, &st.postgres_not_measured) {
                (Some(pg), _) => {
                    let _ = writeln!(
                        md,
                        "| PostgreSQL | `ChannelData::coverage`, µs | {} | {} | {:.2} | ≤ 1.5 |\n\
                         | PostgreSQL | no-op requester round against an in-process responder, µs | {} | {} | {:.2} | ≤ 1.5 |",
                        stat(Some(&pg.coverage_us.0), 0),
                        stat(Some(&pg.coverage_us.1), 0),
                        ratio(&pg.coverage_us),
                        stat(Some(&pg.round_us.0), 0),
                        stat(Some(&pg.round_us.1), 0),
                        ratio(&pg.round_us),
                    );
                }
                (None, why) => {
                    let _ = writeln!(
                        md,
                        "| PostgreSQL | **not measured** ({}) | – | – | – | ≤ 1.5 |",
                        why.as_deref().unwrap_or("no server")
                    );
                }
            }
            let _ = writeln!(
                md,
                "\n| figure | records/s | target |\n|---|---:|---|\n\
                 | `RecordStore::apply`, pages of 1000 inbound shared records | {} | – |\n\
                 | raw sqlx inserts of the same rows, 1000 per transaction | {} | – |\n\
                 | batched inserts of the same rows (32 per `INSERT`), 1000 per transaction | {} | – |\n\
                 | ratio apply / raw | {} | ≥ 0.50 |",
                stat(Some(&st.apply_per_s), 0),
                stat(Some(&st.raw_per_s), 0),
                stat(Some(&st.batched_per_s), 0),
                stat(Some(&st.apply_ratio), 2),
            );
        }
        md
    }
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Howard Hinnant's days-to-civil.
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_spreads_and_percentiles() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(&[1.0, 2.0, 3.0, 10.0]).unwrap().median, 2.5);
        assert!(Stat::of(&[]).is_none());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn number_formats() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(stat(Some(&Stat::of(&[1.0, 1.0]).unwrap()), 1), "1.0");
        assert_eq!(
            stat(Some(&Stat::of(&[10_000.0, 20_000.0, 30_000.0]).unwrap()), 0),
            "20,000 (10,000–30,000)"
        );
        assert_eq!(today().len(), 10);
    }
}
