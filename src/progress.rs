//! Terminal progress bars for long loads and saves (hidden when stderr is not a terminal).

use std::time::Duration;

use adaptc_ir::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// Below this many bytes a bar would only flicker; nothing is drawn.
const MIN_BYTES: u64 = 64 << 20;

pub struct Bar {
    bar: std::cell::RefCell<Option<ProgressBar>>,
}

impl Bar {
    pub fn new() -> Bar {
        Bar { bar: std::cell::RefCell::new(None) }
    }
}

impl Progress for Bar {
    fn begin(&self, what: &str, total: u64) {
        if total < MIN_BYTES {
            return;
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template("{msg:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.bar.borrow_mut() = Some(bar);
    }

    fn advance(&self, done: u64) {
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.inc(done);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
}
