//! What the OS says about the machine and its memory (Linux /proc; None elsewhere).

use serde::{Deserialize, Serialize};

/// The process's peak resident set size (VmHWM).
pub fn peak_rss_bytes() -> Option<u64> {
    vgg_tensor::memory::proc_kib("/proc/self/status", "VmHWM:")
}

/// Starts a new peak-RSS measurement (Linux 4.0+); harmless where unsupported.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The machine a benchmark ran on, as far as the OS tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The processor's model name (`/proc/cpuinfo`), where known.
    pub cpu: Option<String>,
    /// Logical CPUs this process may run on.
    pub logical_cpus: usize,
    /// Physical memory, where known.
    pub memory_bytes: Option<u64>,
    /// The operating system and, on Linux, the kernel release.
    pub os: String,
}

impl Machine {
    /// This machine.
    pub fn this() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, name)| name.trim().to_string())
            });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| format!(" {}", r.trim()))
            .unwrap_or_default();
        Machine {
            cpu,
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: vgg_tensor::memory::proc_kib("/proc/meminfo", "MemTotal:"),
            os: format!(
                "{}{kernel} ({})",
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_at_least_one_cpu() {
        let m = Machine::this();
        assert!(m.logical_cpus >= 1);
        assert!(m.os.contains(std::env::consts::ARCH));
        if cfg!(target_os = "linux") {
            assert!(m.memory_bytes.is_some_and(|b| b > 0));
        }
    }
}
