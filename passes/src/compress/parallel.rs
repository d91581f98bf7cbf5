//! Running independent per-weight computations (an SVD, a quantization) on every core: the
//! work of a model's linear layers is independent, and one layer rarely fills a machine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// `items.map(f)` in order, on up to one thread per core; each thread takes the next item as
/// it finishes the last, so a few large items do not leave the others idle.
pub fn map_parallel<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len());
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(slot) = slots.get(i) else { break };
                        if let Some(item) = slot.lock().ok().and_then(|mut g| g.take()) {
                            out.push((i, f(item)));
                        }
                    }
                    out
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_order() {
        let out = map_parallel((0..100).collect(), |i: u64| i * i);
        assert_eq!(out, (0..100).map(|i| i * i).collect::<Vec<_>>());
        assert!(map_parallel(Vec::<u8>::new(), |i| i).is_empty());
    }
}
