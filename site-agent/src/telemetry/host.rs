//! Host metrics read from Linux's `/proc` and the state directory's file system: cheap
//! enough to take every minute on the smallest edge node.

use std::path::{Path, PathBuf};

use continuum_shared::telemetry::{Metric, Sample};

/// Takes host samples; remembers the previous CPU counters so usage covers the time
/// between two samples.
pub struct HostSampler {
    proc_dir: PathBuf,
    state_dir: PathBuf,
    previous_cpu: Option<CpuTimes>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl HostSampler {
    /// A sampler of this host, measuring the disk that holds `state_dir`.
    pub fn new(state_dir: &Path) -> HostSampler {
        HostSampler {
            proc_dir: PathBuf::from("/proc"),
            state_dir: state_dir.to_owned(),
            previous_cpu: None,
        }
    }

    /// Whatever can be read now; a source that cannot be read is left out.
    pub fn sample(&mut self) -> Vec<Sample> {
        let mut samples = Vec::with_capacity(10);
        let mut push = |metric, value: f64| {
            samples.push(Sample {
                metric,
                service: None,
                value,
            })
        };
        let read = |name: &str| std::fs::read_to_string(self.proc_dir.join(name)).ok();
        if let Some(cpu) = read("stat").as_deref().and_then(cpu_times) {
            if let Some(previous) = self.previous_cpu {
                let total = cpu.total.saturating_sub(previous.total);
                if total > 0 {
                    let busy = cpu.busy.saturating_sub(previous.busy);
                    push(Metric::HostCpuUsage, (busy as f64 / total as f64).min(1.0));
                }
            }
            self.previous_cpu = Some(cpu);
        }
        if let Some((total, available)) = read("meminfo").as_deref().and_then(memory) {
            push(Metric::HostMemoryTotal, total as f64);
            push(
                Metric::HostMemoryUsed,
                total.saturating_sub(available) as f64,
            );
        }
        if let Some([one, five, fifteen]) = read("loadavg").as_deref().and_then(load) {
            push(Metric::HostLoad1, one);
            push(Metric::HostLoad5, five);
            push(Metric::HostLoad15, fifteen);
        }
        if let Some((received, sent)) = read("net/dev").as_deref().and_then(network) {
            push(Metric::HostNetworkReceived, received as f64);
            push(Metric::HostNetworkSent, sent as f64);
        }
        if let Ok(fs) = rustix::fs::statvfs(&self.state_dir) {
            let total = fs.f_blocks.saturating_mul(fs.f_frsize);
            let free = fs.f_bfree.saturating_mul(fs.f_frsize);
            push(Metric::HostDiskTotal, total as f64);
            push(Metric::HostDiskUsed, total.saturating_sub(free) as f64);
        }
        samples
    }
}

/// Busy and total jiffies from the first line of `/proc/stat`.
fn cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Total and available memory in bytes from `/proc/meminfo`.
fn memory(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kib * 1024)
        })
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

/// The three load averages from `/proc/loadavg`.
fn load(loadavg: &str) -> Option<[f64; 3]> {
    let mut fields = loadavg.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// Bytes received and sent on every interface except loopback, from `/proc/net/dev`.
fn network(dev: &str) -> Option<(u64, u64)> {
    let mut totals = (0u64, 0u64);
    let mut seen = false;
    for line in dev.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = counters
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if let (Some(rx), Some(tx)) = (fields.first(), fields.get(8)) {
            totals.0 = totals.0.saturating_add(*rx);
            totals.1 = totals.1.saturating_add(*tx);
            seen = true;
        }
    }
    seen.then_some(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_usage_is_busy_over_total_between_samples() {
        let a = cpu_times("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        let b = cpu_times("cpu  200 0 200 1400 200 0 0 0 0 0\n").unwrap();
        assert_eq!(
            a,
            CpuTimes {
                busy: 200,
                total: 1000
            }
        );
        assert_eq!(b.busy - a.busy, 200);
        assert_eq!(b.total - a.total, 1000);
        assert_eq!(cpu_times("intr 1 2 3"), None);
    }

    #[test]
    fn memory_is_read_in_bytes() {
        let meminfo = "MemTotal:       2048 kB\nMemFree:   10 kB\nMemAvailable:   1024 kB\n";
        assert_eq!(memory(meminfo), Some((2048 * 1024, 1024 * 1024)));
        assert_eq!(memory("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn load_and_network_parse_what_linux_writes() {
        assert_eq!(load("0.50 1.25 2.00 1/123 456"), Some([0.5, 1.25, 2.0]));
        assert_eq!(load("garbage"), None);
        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes\n    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 100 1 0 0 0 0 0 0 50 1 0 0 0 0 0 0\n  eth1: 10 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n";
        assert_eq!(network(dev), Some((110, 55)));
    }

    #[test]
    fn a_real_host_yields_every_host_metric_on_the_second_sample() {
        let dir = tempfile::tempdir().unwrap();
        let mut sampler = HostSampler::new(dir.path());
        sampler.sample();
        // Long enough for the kernel's CPU counters to move (they tick at 100 Hz).
        std::thread::sleep(std::time::Duration::from_millis(200));
        let metrics: Vec<Metric> = sampler.sample().iter().map(|s| s.metric).collect();
        for metric in [
            Metric::HostCpuUsage,
            Metric::HostMemoryUsed,
            Metric::HostMemoryTotal,
            Metric::HostDiskUsed,
            Metric::HostDiskTotal,
            Metric::HostLoad1,
            Metric::HostNetworkSent,
        ] {
            assert!(metrics.contains(&metric), "{metric:?} missing: {metrics:?}");
        }
    }
}
