//! What a run measured: latency percentiles, the JSON report, and the server process's RSS
//! and CPU read from `/proc` when it runs on this machine.

use std::time::Duration;

use hdrhistogram::Histogram;
use procfs::net::TcpState;
use procfs::process::{FDTarget, Process};
use serde::Serialize;

/// Latencies in microseconds, to 3 significant figures (0.1 %): a run records millions.
#[derive(Debug, Clone)]
pub(crate) struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        // Auto-resizing: it grows to the longest latency recorded.
        Latencies(Histogram::new(3).expect("3 significant figures"))
    }
}

impl Latencies {
    pub(crate) fn record(&mut self, d: Duration) {
        let micros = d.as_micros().min(u32::MAX as u128) as u64;
        self.0.record(micros).expect("an auto-resizing histogram takes any u32");
    }

    pub(crate) fn merge(&mut self, other: Latencies) {
        self.0.add(other.0).expect("auto-resizing histograms add");
    }

    pub(crate) fn summary(&self) -> Percentiles {
        let h = &self.0;
        let ms = |micros: u64| if h.is_empty() { 0.0 } else { micros as f64 / 1000.0 };
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Percentiles {
    pub count: u64,
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
pub struct Report {
    pub(crate) workload: crate::Workload,
    pub(crate) format: crate::BodyFormat,
    pub(crate) dataset: String,
    pub(crate) members: usize,
    pub(crate) batch: usize,
    pub(crate) connections: u32,
    /// Offered rows per second; 0 is as fast as the server answers.
    pub(crate) rate: u64,
    pub(crate) seconds: f64,
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    pub(crate) requests: u64,
    pub(crate) rows_per_sec: f64,
    pub(crate) mb_per_sec: f64,
    pub(crate) bytes_per_row: f64,
    /// From when each batch was due (its send time in max mode) to its 200, retries included.
    pub(crate) ack_ms: Percentiles,
    /// 429 and 503 answers.
    pub(crate) refused: u64,
    /// Batches that were sent again after a refusal (and then stored once).
    pub(crate) retried: u64,
    /// Batches still refused when the run ended (the wait the server asked for went past
    /// it): not stored, and not a failure.
    pub(crate) given_up: u64,
    /// Batches that were not stored: any other answer, a transport error, or refusals for
    /// longer than a batch waits.
    pub(crate) failed: u64,
    pub(crate) errors: Vec<String>,
    pub(crate) server: Option<ServerReport>,
    pub(crate) reads: Option<std::collections::BTreeMap<&'static str, ReadReport>>,
    pub(crate) samples: Vec<Sample>,
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
        println!(
            "  refused {}, retried {}, given up at the end {}, failed {}",
            self.refused, self.retried, self.given_up, self.failed
        );
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

impl ServerProcess {
    /// The process listening on `port` of this machine: the socket's inode from the TCP
    /// tables, then the process holding it (only ours are readable without root).
    pub(crate) fn listening_on(port: u16) -> Option<ServerProcess> {
        let inodes: Vec<u64> = [procfs::net::tcp(), procfs::net::tcp6()]
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.state == TcpState::Listen && e.local_address.port() == port)
            .map(|e| e.inode)
            .collect();
        if inodes.is_empty() {
            return None;
        }
        procfs::process::all_processes().ok()?.flatten().find_map(|p| {
            let holds =
                p.fd().ok()?.flatten().any(|fd| matches!(fd.target, FDTarget::Socket(i) if inodes.contains(&i)));
            holds.then_some(ServerProcess(p.pid as u32))
        })
    }

    fn process(&self) -> Option<Process> {
        Process::new(i32::try_from(self.0).ok()?).ok()
    }

    /// Resident set size in bytes.
    pub(crate) fn rss(&self) -> Option<u64> {
        Some(self.process()?.status().ok()?.vmrss? * 1024)
    }

    /// User plus system CPU time.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        let stat = self.process()?.stat().ok()?;
        Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
    }
}

/// The value of an unlabelled gauge in Prometheus text.
pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_thousandth() {
        let (mut low, mut high) = (Latencies::default(), Latencies::default());
        for ms in 1..=500 {
            low.record(Duration::from_millis(ms));
            high.record(Duration::from_millis(ms + 500));
        }
        low.merge(high);
        let p = low.summary();
        assert_eq!(p.count, 1000);
        for (got, want) in [(p.p50, 500.0), (p.p99, 990.0), (p.p999, 999.0), (p.max, 1000.0)] {
            assert!(got >= want && got <= want * 1.001, "{got} ms for {want} ms");
        }
        let none = Latencies::default().summary();
        assert_eq!((none.count, none.p50, none.max), (0, 0.0, 0.0));
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
