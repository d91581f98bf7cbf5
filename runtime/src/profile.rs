//! Per-op timing of runs, switched on with `ADAPTC_PROFILE=1`: where a plan spends its time,
//! by op type, so kernel work goes where it pays. `ADAPTC_PROFILE=nodes` also lists the
//! slowest nodes, `ADAPTC_PROFILE=bytes` the nodes that move the most bytes (what a fusion
//! must remove); `ADAPTC_PROFILE=memory` lists the buffers live at the peak (what a
//! memory cut must shrink).
//!
//! Each op type also shows its operand bytes: the sizes of its inputs and outputs, what a
//! kernel that reads each input and writes each output once moves through memory (a
//! broadcast input counts at its own size; a view, such as Reshape's output, counts though
//! nothing moves; a Gather's table counts as the rows it reads). Operand bytes scale with tokens and layers, so a small CPU run tells how
//! the memory traffic of a GPU step splits between op types.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

/// Whether `ADAPTC_PROFILE` asks for timings (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("ADAPTC_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// Whether `ADAPTC_PROFILE=memory` asks for the buffers live at the peak.
pub fn memory() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("ADAPTC_PROFILE").is_ok_and(|v| v == "memory"))
}

/// Whether `ADAPTC_PROFILE=nodes` or `=bytes` asks for the per-node list too.
pub fn by_node() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("ADAPTC_PROFILE").is_ok_and(|v| v == "nodes" || v == "bytes"))
}

/// Whether the per-node list is ordered by operand bytes (`ADAPTC_PROFILE=bytes`), not time.
fn nodes_by_bytes() -> bool {
    std::env::var("ADAPTC_PROFILE").is_ok_and(|v| v == "bytes")
}

/// Nodes listed by `ADAPTC_PROFILE=nodes`: `ADAPTC_PROFILE_NODES` (default 40).
fn top_nodes() -> usize {
    std::env::var("ADAPTC_PROFILE_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(40)
}

/// Time per op type (and per node, when asked) over one or more runs.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    by_op: HashMap<String, (Duration, usize)>,
    /// Per node (when asked): time, calls and operand bytes.
    by_node: HashMap<String, (Duration, usize, u64)>,
    /// Operand bytes per op type.
    bytes: HashMap<String, u64>,
    /// With `ADAPTC_PROFILE=memory`: the instruction after which the run's live bytes peaked,
    /// and the buffers live then (bytes, the value's name and producer), largest first.
    pub peak: Option<(String, Vec<(u64, String)>)>,
}

impl Profile {
    /// Records one call of `op` that read and wrote `bytes` of operands; `node` describes the
    /// node when the per-node list is on.
    pub fn record(&mut self, op: &str, node: impl FnOnce() -> String, took: Duration, bytes: u64) {
        let e = self.by_op.entry(op.to_string()).or_default();
        e.0 += took;
        e.1 += 1;
        *self.bytes.entry(op.to_string()).or_default() += bytes;
        if by_node() {
            let e = self.by_node.entry(node()).or_default();
            e.0 += took;
            e.1 += 1;
            e.2 += bytes;
        }
    }

    /// Adds another profile's timings.
    pub fn merge(&mut self, other: &Profile) {
        for (op, (d, n)) in &other.by_op {
            let e = self.by_op.entry(op.clone()).or_default();
            e.0 += *d;
            e.1 += n;
        }
        for (node, (d, n, b)) in &other.by_node {
            let e = self.by_node.entry(node.clone()).or_default();
            e.0 += *d;
            e.1 += n;
            e.2 += b;
        }
        for (op, b) in &other.bytes {
            *self.bytes.entry(op.clone()).or_default() += b;
        }
        let total =
            |p: &Option<(String, Vec<(u64, String)>)>| p.as_ref().map_or(0, |(_, l)| l.iter().map(|x| x.0).sum());
        if total(&other.peak) > total(&self.peak) {
            self.peak = other.peak.clone();
        }
    }

    /// Operand bytes of every call of `op` so far.
    pub fn bytes(&self, op: &str) -> u64 {
        self.bytes.get(op).copied().unwrap_or(0)
    }

    pub fn total(&self) -> Duration {
        self.by_op.values().map(|(d, _)| *d).sum()
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total().as_secs_f64().max(1e-12);
        let mut rows: Vec<_> = self.by_op.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0));
        let all_bytes = self.bytes.values().sum::<u64>().max(1) as f64;
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        writeln!(f, "{:<40} {:>10} {:>7} {:>8} {:>10} {:>7}", "op", "ms", "%", "calls", "GiB moved", "%")?;
        for (op, (d, n)) in rows {
            let ms = d.as_secs_f64() * 1e3;
            let b = self.bytes(op);
            let (pt, pb) = (100.0 * d.as_secs_f64() / total, 100.0 * b as f64 / all_bytes);
            writeln!(f, "{op:<40} {ms:>10.1} {pt:>6.1}% {n:>8} {:>10.3} {pb:>6.1}%", gib(b))?;
        }
        let moved = self.bytes.values().sum::<u64>();
        write!(f, "{:<40} {:>10.1} {:>7} {:>8} {:>10.3}", "total", total * 1e3, "", "", gib(moved))?;
        if let Some((at, live)) = &self.peak {
            let total: u64 = live.iter().map(|(b, _)| b).sum();
            writeln!(
                f,
                "\n\nlive at the peak ({:.1} MiB, after {at}), largest first:",
                total as f64 / (1 << 20) as f64
            )?;
            for (b, what) in live.iter().take(top_nodes()) {
                writeln!(f, "{:>10.1} MiB  {what}", *b as f64 / (1 << 20) as f64)?;
            }
        }
        if !self.by_node.is_empty() {
            let mut rows: Vec<_> = self.by_node.iter().collect();
            if nodes_by_bytes() {
                rows.sort_by_key(|r| std::cmp::Reverse(r.1 .2));
                writeln!(f, "\n\nnodes moving the most bytes:")?;
            } else {
                rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0));
                writeln!(f, "\n\nslowest nodes:")?;
            }
            for (node, (d, n, b)) in rows.into_iter().take(top_nodes()) {
                let mib = *b as f64 / (1u64 << 20) as f64;
                writeln!(f, "{:>10.1} ms {mib:>9.1} MiB {n:>4}×  {node}", d.as_secs_f64() * 1e3)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operand_bytes_add_up_per_op_and_across_merges() {
        let mut p = Profile::default();
        p.record("Add", String::new, Duration::from_millis(2), 3 << 30);
        p.record("Add", String::new, Duration::from_millis(1), 1 << 30);
        p.record("MatMul", String::new, Duration::from_millis(5), 1 << 29);
        let mut q = Profile::default();
        q.record("Add", String::new, Duration::from_millis(1), 1 << 30);
        p.merge(&q);
        assert_eq!(p.bytes("Add"), 5 << 30);
        assert_eq!(p.bytes("MatMul"), 1 << 29);
        assert_eq!(p.bytes("Softmax"), 0);
        let text = p.to_string();
        let add = text.lines().find(|l| l.starts_with("Add")).expect("an Add row");
        // 5 GiB of the 5.5 moved: 90.9%.
        assert!(add.contains("5.000") && add.contains("90.9%"), "{add}");
        assert!(text.lines().last().is_some_and(|l| l.starts_with("total") && l.contains("5.500")), "{text}");
    }
}
