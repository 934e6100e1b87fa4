//! What the OS says about memory (Linux /proc; None elsewhere).

/// The process's peak resident set size (VmHWM).
pub fn peak_rss_bytes() -> Option<u64> {
    vgg_tensor::memory::proc_kib("/proc/self/status", "VmHWM:")
}

/// Starts a new peak-RSS measurement (Linux 4.0+); harmless where unsupported.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
