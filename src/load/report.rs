//! What a run measured: latency percentiles, the JSON report, and the server process's RSS
//! and CPU read from `/proc` when it runs on this machine.

use std::time::Duration;

use serde::Serialize;

/// Latency samples in microseconds; exact percentiles (a run keeps at most a few million).
#[derive(Debug, Default, Clone)]
pub(crate) struct Latencies(Vec<u32>);

impl Latencies {
    pub(crate) fn record(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u32::MAX as u128) as u32);
    }

    pub(crate) fn merge(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub(crate) fn summary(&mut self) -> Percentiles {
        self.0.sort_unstable();
        let at = |q: f64| {
            if self.0.is_empty() {
                return 0.0;
            }
            let i = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len()) - 1;
            self.0[i] as f64 / 1000.0
        };
        Percentiles { count: self.0.len(), p50: at(0.50), p99: at(0.99), p999: at(0.999), max: at(1.0) }
    }
}

/// Milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// One door of the `mixed` workload's reads.
#[derive(Debug, Serialize)]
pub(crate) struct ReadReport {
    pub ms: Percentiles,
    pub failed: u64,
    pub refused: u64,
}

/// A `soak` sample.
#[derive(Debug, Serialize)]
pub(crate) struct Sample {
    pub seconds: f64,
    pub rows: u64,
    pub rows_per_sec: f64,
    pub server_rss_bytes: Option<u64>,
    pub buffer_bytes: Option<f64>,
    pub files: Option<f64>,
    pub compaction_backlog: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ServerReport {
    pub pid: u32,
    pub rss_max_bytes: u64,
    pub rss_end_bytes: u64,
    pub cpu_seconds: f64,
    /// CPU seconds per wall second: 1.0 is one core busy.
    pub cores_busy: f64,
}

/// The JSON report (`--report`, and the last line of stdout).
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub workload: crate::config::Workload,
    pub format: crate::config::BodyFormat,
    pub dataset: String,
    pub members: usize,
    pub batch: usize,
    pub connections: u32,
    /// Offered rows per second; 0 is as fast as the server answers.
    pub rate: u64,
    pub seconds: f64,
    pub rows: u64,
    pub bytes: u64,
    pub requests: u64,
    pub rows_per_sec: f64,
    pub mb_per_sec: f64,
    pub bytes_per_row: f64,
    /// From when each batch was due (its send time in max mode) to its 200, retries included.
    pub ack_ms: Percentiles,
    /// 429 and 503 answers.
    pub refused: u64,
    /// Batches that were sent again after a refusal (and then stored once).
    pub retried: u64,
    /// Batches that were not stored: any other answer, a transport error, or still refused
    /// when the run ended.
    pub failed: u64,
    pub errors: Vec<String>,
    pub server: Option<ServerReport>,
    pub reads: Option<std::collections::BTreeMap<&'static str, ReadReport>>,
    pub samples: Vec<Sample>,
}

impl Report {
    /// The human summary.
    pub(crate) fn print(&self) {
        println!(
            "{:?} {:?}: {} rows in {:.1} s over {} connections ({} members, {} rows a batch{})",
            self.workload,
            self.format,
            self.rows,
            self.seconds,
            self.connections,
            self.members,
            self.batch,
            if self.rate > 0 { format!(", offered {} rows/s", self.rate) } else { String::new() }
        );
        println!(
            "  {:.0} rows/s, {:.1} MB/s, {:.0} bytes/row; ack p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.rows_per_sec,
            self.mb_per_sec,
            self.bytes_per_row,
            self.ack_ms.p50,
            self.ack_ms.p99,
            self.ack_ms.p999,
            self.ack_ms.max
        );
        println!("  refused {}, retried {}, failed {}", self.refused, self.retried, self.failed);
        for e in &self.errors {
            println!("  error: {e}");
        }
        if let Some(s) = &self.server {
            println!(
                "  server pid {}: RSS max {:.0} MiB, end {:.0} MiB; CPU {:.1} s ({:.2} cores)",
                s.pid,
                s.rss_max_bytes as f64 / 1048576.0,
                s.rss_end_bytes as f64 / 1048576.0,
                s.cpu_seconds,
                s.cores_busy
            );
        }
        for (door, r) in self.reads.iter().flatten() {
            println!(
                "  reads {door}: {} in all, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; refused {}, failed {}",
                r.ms.count, r.ms.p50, r.ms.p99, r.ms.p999, r.refused, r.failed
            );
        }
    }
}

/// The server process, read from `/proc`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerProcess(pub u32);

/// `sysconf(_SC_CLK_TCK)` is 100 on every Linux this runs on.
const CLOCK_TICKS: f64 = 100.0;

impl ServerProcess {
    /// The process listening on `port` of this machine, found through `/proc/net/tcp*`
    /// and the processes' socket descriptors (only ours are readable without root).
    pub(crate) fn listening_on(port: u16) -> Option<ServerProcess> {
        let mut inodes = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(table) else { continue };
            for line in text.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                // local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; inode is column 10.
                if cols.len() > 9
                    && cols[3] == "0A"
                    && cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                {
                    inodes.push(format!("socket:[{}]", cols[9]));
                }
            }
        }
        if inodes.is_empty() {
            return None;
        }
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path())
                    && inodes.iter().any(|i| target.as_os_str() == i.as_str())
                {
                    return Some(ServerProcess(pid));
                }
            }
        }
        None
    }

    /// Resident set size in bytes.
    pub(crate) fn rss(&self) -> Option<u64> {
        rss_bytes(self.0)
    }

    /// User plus system CPU time.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0)).ok()?;
        // The command name may hold spaces: fields are counted after its closing parenthesis.
        let rest = &stat[stat.rfind(')')? + 2..];
        let cols: Vec<&str> = rest.split_whitespace().collect();
        let ticks = cols.get(11)?.parse::<u64>().ok()? + cols.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / CLOCK_TICKS)
    }
}

/// The value of an unlabelled gauge in Prometheus text.
pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Resident set size of process `pid` in bytes, from `/proc` (Linux).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_exact() {
        let mut l = Latencies::default();
        for ms in 1..=1000 {
            l.record(Duration::from_millis(ms));
        }
        let p = l.summary();
        assert_eq!((p.count, p.p50, p.p99, p.p999, p.max), (1000, 500.0, 990.0, 999.0, 1000.0));
    }

    #[test]
    fn this_process_is_found_by_its_port_and_measured() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = ServerProcess::listening_on(port).expect("our own listener");
        assert_eq!(me.0, std::process::id());
        assert!(me.rss().unwrap() > 0);
        assert!(me.cpu_seconds().is_some());
    }

    #[test]
    fn gauges_are_read_from_prometheus_text() {
        let text =
            "# TYPE trove_ingest_buffer_bytes gauge\ntrove_ingest_buffer_bytes 1234\ntrove_ingest_buffer_bytes_x 9\n";
        assert_eq!(metric(text, "trove_ingest_buffer_bytes"), Some(1234.0));
        assert_eq!(metric(text, "trove_ingest_files"), None);
    }
}
