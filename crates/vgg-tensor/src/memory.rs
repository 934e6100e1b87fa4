//! How much memory the host can give: every size a user controls is checked against it before
//! anything that large is allocated.

use std::sync::OnceLock;

/// The process's memory budget (`--max-memory`), set once by the program that runs the work.
static BUDGET: OnceLock<u64> = OnceLock::new();

/// Caps every plan this process makes (weights, batches, files read) at `bytes`; the first call
/// wins, later ones are ignored.
pub fn set_budget(bytes: u64) {
    let _ = BUDGET.set(bytes);
}

/// The budget set by [`set_budget`], if any.
pub fn budget() -> Option<u64> {
    BUDGET.get().copied()
}

/// `free` (what a device or the host reports) lowered to the budget; None where neither is known.
pub fn within_budget(free: Option<u64>) -> Option<u64> {
    match (free, budget()) {
        (Some(free), Some(cap)) => Some(free.min(cap)),
        (free, cap) => free.or(cap),
    }
}

/// The host memory this process may plan to use: [`host_available_bytes`] within the budget.
pub fn host_budget_bytes() -> Option<u64> {
    within_budget(host_available_bytes())
}

/// Memory available to new allocations without swapping: Linux's MemAvailable, lowered to what
/// the process's cgroup still allows (a container's limit). None where neither can be read.
pub fn host_available_bytes() -> Option<u64> {
    let meminfo = proc_kib("/proc/meminfo", "MemAvailable:");
    let cgroup = cgroup_headroom();
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The cgroup v2 limit less what the cgroup uses (None without a limit).
fn cgroup_headroom() -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{name}")).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?;
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// A `key: N kB` line of a /proc file, in bytes.
pub fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Bytes for people: "512 B", "3.50 MiB", "2.00 GiB", "16.00 TiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 19), "1.50 MiB");
        assert_eq!(human_bytes(2 << 30), "2.00 GiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.00 TiB");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn linux_reports_available_memory() {
        let bytes = host_available_bytes().expect("Linux has /proc/meminfo");
        assert!(bytes > 1 << 20, "{bytes}");
    }
}
