//! NVRTC: the kernels of `kernels.cu` compiled once per process for the device's architecture,
//! and each elementwise-chain program's own kernel at its first launch.

use std::ffi::CString;

use cudarc::nvrtc::{result, sys};

/// What every compiled program starts with: types, bf16 conversions, the elementwise op tables
/// and the chain arguments (embedded, so the binary needs no files beside it).
pub const PRELUDE: &str = include_str!("prelude.cuh");

/// The CUDA C source of every fixed kernel: the prelude, then `kernels.cu`.
pub const KERNEL_SOURCE: &str = concat!(include_str!("prelude.cuh"), "\n", include_str!("kernels.cu"));

/// Whether `libnvrtc` can be loaded (cudarc would panic on first use otherwise).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the shared library; nothing is called through it.
    unsafe { sys::is_culib_present() }
}

/// Compiles [`KERNEL_SOURCE`] for `arch` (`sm_90`, …) into a CUBIN image, or returns NVRTC's
/// log. Runs without a GPU (only NVRTC is needed), which is how the tests check the kernels on
/// machines that have none.
pub fn compile_kernels(arch: &str) -> Result<Vec<u8>, String> {
    compile(KERNEL_SOURCE, "adaptc_kernels.cu", arch, Contraction::Allowed)
}

/// Whether NVRTC may contract a product and a sum into one fused multiply-add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contraction {
    /// `--fmad=true`: the fixed kernels, whose products and sums the CPU kernels do not
    /// reproduce bit for bit anyway (reductions sum in another order).
    Allowed,
    /// `--fmad=false`: every product and sum rounded on its own, as the CPU chain kernel
    /// computes a program's `Mul` then `Add` (the chains' bits then match the CPU backend's).
    Off,
}

/// Compiles `source` (named `name` in NVRTC's messages) for `arch` into a CUBIN image, or
/// returns NVRTC's log.
pub fn compile(source: &str, name: &str, arch: &str, contraction: Contraction) -> Result<Vec<u8>, String> {
    if !nvrtc_available() {
        return Err("libnvrtc.so (CUDA 13) was not found on the library path".into());
    }
    let src = CString::new(source).map_err(|e| e.to_string())?;
    let file = CString::new(name).map_err(|e| e.to_string())?;
    let prog = result::create_program(&src, Some(&file)).map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    let fmad = matches!(contraction, Contraction::Allowed);
    let opts = [format!("--gpu-architecture={arch}"), "--std=c++17".to_string(), format!("--fmad={fmad}")];
    // SAFETY: `prog` is a live program created above and destroyed once below.
    let out = unsafe {
        let compiled = result::compile_program(prog, &opts);
        let out = match compiled {
            Ok(()) => cubin(prog),
            Err(e) => {
                let log = result::get_program_log(prog).map(|l| log_text(&l)).unwrap_or_default();
                Err(format!("NVRTC failed to compile {name} for {arch} ({e:?}):\n{log}"))
            }
        };
        let _ = result::destroy_program(prog);
        out
    };
    out
}

/// The CUBIN image of a compiled program.
///
/// # Safety
/// `prog` must be a successfully compiled, live NVRTC program.
unsafe fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: per the function's contract; `size` is a valid out-pointer.
    let r = unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return Err(format!("nvrtcGetCUBINSize: {r:?}"));
    }
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds the `size` bytes NVRTC reported.
    let r = unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcGetCUBIN: {r:?}"));
    }
    Ok(buf)
}

fn log_text(log: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = log.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
