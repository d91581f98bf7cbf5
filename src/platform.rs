//! The process the runtime runs in: a CPU check and allocator tuning, done once at start-up.

/// Whether this CPU runs the instructions the build was compiled for (x86-64-v3 on x86-64, see
/// `.cargo/config.toml`); an error names what is missing instead of dying on SIGILL later.
pub fn check_cpu() -> Result<(), String> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        let missing: Vec<&str> = [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("bmi2", std::arch::is_x86_feature_detected!("bmi2")),
        ]
        .into_iter()
        .filter(|(_, present)| !present)
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            return Err(format!(
                "this adaptc was built for x86-64-v3 CPUs but this CPU lacks {}; rebuild it with \
                 RUSTFLAGS=\"-C target-cpu=native\"",
                missing.join(", ")
            ));
        }
    }
    Ok(())
}

/// Ends the process quietly when its output pipe closes (`adaptc inspect m.onnx | head`), as
/// Unix tools do: Rust ignores SIGPIPE, which turns the next `println!` into a panic.
pub fn quiet_broken_pipe() {
    #[cfg(target_os = "linux")]
    // SAFETY: restores the default disposition of one signal; called before any threads start.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Keeps freed memory in the process (glibc): a training step frees and reallocates the same
/// activation sizes every time, and returning them to the OS between kernels turns each
/// reallocation into page faults that cost more than the kernels that fill them.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any threads start.
    unsafe {
        // The largest threshold glibc accepts (HEAP_MAX_SIZE / 2): blocks below it come from the
        // heap and are reused, not mapped and unmapped each time.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// The global allocator: the system one, plus a transparent-huge-page hint for large blocks
/// (Linux). Activations and GEMM operands are megabytes each; on 2 MiB pages the GEMMs take
/// fewer TLB misses and first touches fault 512× less often (measured: ~8% off a MiniLM
/// training step, see bench/results/train-step.md).
pub struct Allocator;

/// Blocks from this size on get the hint.
#[cfg(target_os = "linux")]
const HUGE_FROM: usize = 4 << 20;

#[cfg(target_os = "linux")]
fn advise_huge(p: *mut u8, size: usize) {
    const PAGE: usize = 2 << 20;
    if p.is_null() || size < HUGE_FROM {
        return;
    }
    let start = (p as usize).next_multiple_of(PAGE);
    let end = (p as usize + size) / PAGE * PAGE;
    if end > start {
        // SAFETY: [start, end) lies inside the block just allocated; MADV_HUGEPAGE is only a
        // hint and does not change its contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_: *mut u8, _: usize) {}

// SAFETY: every call forwards to `System` with the same arguments; the hint does not touch
// the memory's contents or ownership.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { std::alloc::System.alloc(layout) };
        advise_huge(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { std::alloc::System.alloc_zeroed(layout) };
        advise_huge(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { std::alloc::System.dealloc(p, layout) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let q = unsafe { std::alloc::System.realloc(p, layout, new_size) };
        advise_huge(q, new_size);
        q
    }
}
