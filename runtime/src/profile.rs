//! Per-op timing of runs, switched on with `ADAPTC_PROFILE=1`: where a plan spends its time,
//! by op type, so kernel work goes where it pays. `ADAPTC_PROFILE=nodes` also lists the
//! slowest nodes.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

/// Whether `ADAPTC_PROFILE` asks for timings (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("ADAPTC_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// Whether `ADAPTC_PROFILE=nodes` asks for the per-node list too.
pub fn by_node() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("ADAPTC_PROFILE").is_ok_and(|v| v == "nodes"))
}

/// Nodes listed by `ADAPTC_PROFILE=nodes`: `ADAPTC_PROFILE_NODES` (default 40).
fn top_nodes() -> usize {
    std::env::var("ADAPTC_PROFILE_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(40)
}

/// Time per op type (and per node, when asked) over one or more runs.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    by_op: HashMap<String, (Duration, usize)>,
    by_node: HashMap<String, (Duration, usize)>,
}

impl Profile {
    /// Records one call of `op`; `node` describes the node when the per-node list is on.
    pub fn record(&mut self, op: &str, node: impl FnOnce() -> String, took: Duration) {
        let e = self.by_op.entry(op.to_string()).or_default();
        e.0 += took;
        e.1 += 1;
        if by_node() {
            let e = self.by_node.entry(node()).or_default();
            e.0 += took;
            e.1 += 1;
        }
    }

    /// Adds another profile's timings.
    pub fn merge(&mut self, other: &Profile) {
        for (op, (d, n)) in &other.by_op {
            let e = self.by_op.entry(op.clone()).or_default();
            e.0 += *d;
            e.1 += n;
        }
        for (node, (d, n)) in &other.by_node {
            let e = self.by_node.entry(node.clone()).or_default();
            e.0 += *d;
            e.1 += n;
        }
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
        writeln!(f, "{:<40} {:>10} {:>7} {:>8}", "op", "ms", "%", "calls")?;
        for (op, (d, n)) in rows {
            let ms = d.as_secs_f64() * 1e3;
            writeln!(f, "{op:<40} {ms:>10.1} {:>6.1}% {n:>8}", 100.0 * d.as_secs_f64() / total)?;
        }
        write!(f, "{:<40} {:>10.1}", "total", total * 1e3)?;
        if !self.by_node.is_empty() {
            let mut rows: Vec<_> = self.by_node.iter().collect();
            rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0));
            writeln!(f, "\n\nslowest nodes:")?;
            for (node, (d, n)) in rows.into_iter().take(top_nodes()) {
                writeln!(f, "{:>10.1} ms {n:>4}×  {node}", d.as_secs_f64() * 1e3)?;
            }
        }
        Ok(())
    }
}
