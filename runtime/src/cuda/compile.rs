//! NVRTC: the kernels of `kernels.cu` compiled once per session for the device's architecture.

use std::ffi::CString;

use cudarc::nvrtc::{result, sys};

/// The CUDA C source of every kernel (embedded, so the binary needs no files beside it).
pub const KERNEL_SOURCE: &str = include_str!("kernels.cu");

/// Whether `libnvrtc` can be loaded (cudarc would panic on first use otherwise).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the shared library; nothing is called through it.
    unsafe { sys::is_culib_present() }
}

/// Compiles [`KERNEL_SOURCE`] for `arch` (`sm_90`, …) into a CUBIN image, or returns NVRTC's
/// log. Runs without a GPU (only NVRTC is needed), which is how the tests check the kernels on
/// machines that have none.
pub fn compile_kernels(arch: &str) -> Result<Vec<u8>, String> {
    if !nvrtc_available() {
        return Err("libnvrtc.so (CUDA 13) was not found on the library path".into());
    }
    let src = CString::new(KERNEL_SOURCE).map_err(|e| e.to_string())?;
    let name = CString::new("adaptc_kernels.cu").map_err(|e| e.to_string())?;
    let prog = result::create_program(&src, Some(&name)).map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    let opts = [format!("--gpu-architecture={arch}"), "--std=c++17".to_string(), "--fmad=true".to_string()];
    // SAFETY: `prog` is a live program created above and destroyed once below.
    let out = unsafe {
        let compiled = result::compile_program(prog, &opts);
        let out = match compiled {
            Ok(()) => cubin(prog),
            Err(e) => {
                let log = result::get_program_log(prog).map(|l| log_text(&l)).unwrap_or_default();
                Err(format!("NVRTC failed to compile the kernels for {arch} ({e:?}):\n{log}"))
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
