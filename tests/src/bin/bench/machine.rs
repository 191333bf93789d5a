//! What the report records about the machine a run was on.

use std::path::Path;

/// CPU, memory, kernel, disk and tool versions, for the record.
pub(crate) async fn machine_info(work: &Path) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .unwrap_or_default();
    // The mount holding the work dir: the longest mount point prefixing it.
    let disk = read("/proc/mounts")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && work.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} {} on {}", f[0], f[2], f[1])))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, s)| s)
        .unwrap_or_default();
    let rotational = disk
        .split_whitespace()
        .next()
        .and_then(|dev| dev.strip_prefix("/dev/"))
        .map(|dev| read(&format!("/sys/block/{dev}/queue/rotational")))
        .map(|r| match r.trim() {
            "0" => " (non-rotational)",
            "1" => " (rotational)",
            _ => "",
        })
        .unwrap_or("");
    let dirty_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("Dirty:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let load = read("/proc/loadavg");
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let mut tools = Vec::new();
    for (bin, arg) in [("rsync", "--version"), ("ssh", "-V"), ("gzip", "--version")] {
        if let Ok(o) = tokio::process::Command::new(bin).arg(arg).output().await {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            if let Some(first) = String::from_utf8_lossy(&text).lines().next() {
                tools.push(first.trim().to_owned());
            }
        }
    }
    format!(
        "{cpu}, {cores} cores, {:.1} GiB RAM\n{os}, kernel {kernel}\ndisk: {disk}{rotational}\n\
         load average at start: {}, dirty page cache {:.0} MiB\ntools: {}",
        mem_kb as f64 / (1024.0 * 1024.0),
        load.join(" "),
        dirty_kb as f64 / 1024.0,
        tools.join("; ")
    )
}
