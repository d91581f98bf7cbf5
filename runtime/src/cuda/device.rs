//! Opening the device: the guards that turn a missing driver, library or GPU into an error,
//! and [`Gpu`], everything a kernel launch needs (context, stream, cuBLAS, compiled kernels).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream};

use super::compile::{compile, compile_kernels, Contraction};
use super::ops::chain::specialise::{self, ProgramKey, Walk};
use super::ops::chain::ChainArgs;
use crate::error::RuntimeError;

/// Every kernel entry point of `kernels.cu` the backend launches.
pub const ENTRY_POINTS: &[&str] = &[
    "unary_f32",
    "is_nan_f32",
    "binary_f32",
    "binary_bf16",
    "compare_f32",
    "compare_i64",
    "compare_i32",
    "logic_u8",
    "not_u8",
    "where_b1",
    "where_b2",
    "where_b4",
    "where_b8",
    "copy_b1",
    "copy_b2",
    "copy_b4",
    "copy_b8",
    "gather_b1_i64",
    "gather_b2_i64",
    "gather_b4_i64",
    "gather_b8_i64",
    "gather_b4_i32",
    "gather_b8_i32",
    "gather_nd_b1",
    "gather_nd_b2",
    "gather_nd_b4",
    "gather_nd_b8",
    "cast_f32_i64",
    "cast_f32_i32",
    "cast_f32_bool",
    "cast_i64_f32",
    "cast_i64_i32",
    "cast_i64_bool",
    "cast_i32_f32",
    "cast_i32_i64",
    "cast_i32_bool",
    "cast_bool_f32",
    "cast_bool_i64",
    "cast_bool_i32",
    "cast_f32_bf16",
    "cast_bf16_f32",
    "cast_bf16_bool",
    "cast_bool_bf16",
    "fill_rows_f32",
    "fill_rows_bf16",
    "fill_f32",
    "copy_unless_flagged",
    "scatter_add_f32",
    "reduce_f32",
    "colsum_f32",
    "softmax_f32",
    "softmax_grad_f32",
    "attn_probs_f32",
    "attn_grad_probs_f32",
    "attn_row_dot_f32",
    "flash_attn_fwd_d32",
    "flash_attn_bwd_da_d32",
    "flash_attn_bwd_dbv_d32",
    "flash_attn_fwd_d64",
    "flash_attn_bwd_da_d64",
    "flash_attn_bwd_dbv_d64",
    "attn_row_dot_bf16",
    "flash_attn_fwd_d32_bf16",
    "flash_attn_bwd_da_d32_bf16",
    "flash_attn_bwd_dbv_d32_bf16",
    "flash_attn_fwd_d64_bf16",
    "flash_attn_bwd_da_d64_bf16",
    "flash_attn_bwd_dbv_d64_bf16",
    "layer_norm_f32",
    "layer_norm_grad_f32",
    "layer_norm_params_grad_f32",
    "gelu_grad_f32",
    "xent_rows_f32",
    "xent_rows_bf16",
    "xent_finish_f32",
    "xent_grad_f32",
    "xent_grad_f32_bf16",
    "xent_grad_bf16_f32",
    "xent_grad_bf16",
    "sumsq_f64",
    "clip_finish",
    "adamw_f32",
];

fn err(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Backend { backend: "cuda".into(), reason: reason.into() }
}

/// Checks that the driver library loads and a device exists; the error says which is missing.
pub fn probe() -> Result<usize, RuntimeError> {
    // SAFETY: only tries to open the shared library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(err("no CUDA device: the NVIDIA driver library (libcuda.so) could not be loaded"));
    }
    cudarc::driver::result::init().map_err(|e| err(format!("the CUDA driver failed to initialise: {e}")))?;
    let n = CudaContext::device_count().map_err(|e| err(format!("cannot count CUDA devices: {e}")))?;
    if n <= 0 {
        return Err(err("no CUDA device found"));
    }
    Ok(n as usize)
}

/// Makes the device's memory pool a caching arena. cudarc allocates from the stream-ordered
/// pool (`cuMemAllocAsync`), which by default hands its free memory back to the driver at
/// every synchronisation (release threshold 0): each training step would map its activations
/// afresh. With no threshold, freed buffers stay in the pool and the next step's allocations of
/// the same sizes reuse them without a driver call, as PyTorch's caching allocator does.
fn keep_pool_memory(ctx: &CudaContext) -> Result<(), cudarc::driver::DriverError> {
    use cudarc::driver::sys;
    let Some(pool) = default_pool(ctx)? else { return Ok(()) };
    let mut threshold = u64::MAX;
    // SAFETY: a live pool handle; the attribute takes a pointer to a u64.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()
    }
}

/// The device's default memory pool, the one stream-ordered allocations come from (`None`
/// where the device has no such allocator).
pub(super) fn default_pool(
    ctx: &CudaContext,
) -> Result<Option<cudarc::driver::sys::CUmemoryPool>, cudarc::driver::DriverError> {
    use cudarc::driver::sys;
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `ctx` is current on this thread (the callers bind it); the handle is written by
    // the driver before it is read.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()? };
    Ok(Some(pool))
}

/// One opened device.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// A second stream, never captured: allocations that must outlive a CUDA graph's capture.
    pub(super) side: Arc<CudaStream>,
    pub blas: CudaBlas,
    pub name: String,
    /// The compute capability's major number (bf16 tensor cores from 8).
    pub compute_major: i32,
    /// The architecture NVRTC compiles for (`sm_90`, …).
    arch: String,
    functions: HashMap<&'static str, CudaFunction>,
    /// Each elementwise-chain program's own kernel, compiled at its first launch.
    chain_kernels: Mutex<HashMap<ProgramKey, CudaFunction>>,
    /// Set by kernels that meet a bad index or label (first one wins); read after each run.
    pub error_flag: Mutex<CudaSlice<i64>>,
    counters: Mutex<Placement>,
    /// Index maps of IndexMapGrad instructions, uploaded once per node and shapes.
    pub index_maps: Mutex<HashMap<String, Arc<CudaSlice<u8>>>>,
    /// While a run is captured into a CUDA graph: the uploads made meanwhile, which the graph
    /// reads at every replay (`None` when not capturing).
    pub(super) capture: Mutex<Option<Vec<Arc<CudaSlice<u8>>>>>,
    /// cuBLAS's workspace: set explicitly, so cuBLAS never allocates while a run is captured.
    _blas_workspace: CudaSlice<u8>,
}

/// Bytes of cuBLAS's workspace (what NVIDIA recommends from Hopper on).
const BLAS_WORKSPACE: usize = 32 << 20;

use crate::backend::Placement;

/// Devices opened so far: the kernels are compiled once per process and device, however many
/// sessions (training and evaluation graphs, test cases) use it.
static OPENED: Mutex<Vec<(usize, Arc<Gpu>)>> = Mutex::new(Vec::new());

impl Gpu {
    /// Device `ordinal`, opened on first use and shared afterwards.
    pub fn shared(ordinal: usize) -> Result<Arc<Gpu>, RuntimeError> {
        let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, g)) = opened.iter().find(|(o, _)| *o == ordinal) {
            return Ok(g.clone());
        }
        let g = Arc::new(Gpu::open(ordinal)?);
        opened.push((ordinal, g.clone()));
        Ok(g)
    }

    fn open(ordinal: usize) -> Result<Gpu, RuntimeError> {
        let count = probe()?;
        if ordinal >= count {
            return Err(err(format!("device {ordinal} does not exist ({count} found)")));
        }
        // SAFETY: only tries to open the shared libraries.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(err("libcublas.so (CUDA 13) was not found on the library path"));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| err(format!("cannot open device {ordinal}: {e}")))?;
        // One stream runs everything in order, so cudarc's per-buffer events are not needed.
        // SAFETY: no buffers exist yet and the backend only ever uses this one stream.
        unsafe { ctx.disable_event_tracking() };
        keep_pool_memory(&ctx).map_err(|e| err(format!("cannot configure the memory pool: {e}")))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (major, minor) = ctx.compute_capability().map_err(|e| err(format!("compute capability: {e}")))?;
        let arch = format!("sm_{major}{minor}");
        let image = compile_kernels(&arch).map_err(err)?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(image))
            .map_err(|e| err(format!("cannot load the kernels compiled for {arch}: {e}")))?;
        let mut functions = HashMap::new();
        for &name in ENTRY_POINTS {
            let f = module.load_function(name).map_err(|e| err(format!("kernel `{name}`: {e}")))?;
            functions.insert(name, f);
        }
        // A stream of our own, not the legacy default stream, which cannot be captured.
        let stream = ctx.new_stream().map_err(|e| err(format!("cannot create a stream: {e}")))?;
        let side = ctx.new_stream().map_err(|e| err(format!("cannot create a stream: {e}")))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| err(format!("cuBLAS: {e:?}")))?;
        let blas_workspace = stream.alloc_zeros::<u8>(BLAS_WORKSPACE).map_err(|e| err(format!("alloc: {e}")))?;
        {
            use cudarc::driver::DevicePtr;
            let (ptr, _) = blas_workspace.device_ptr(&stream);
            // SAFETY: the handle is live and bound to `stream`; the workspace outlives it (both
            // are fields of `Gpu`, the handle dropped first) and is only used on that stream.
            let status =
                unsafe { cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut _, BLAS_WORKSPACE) };
            if status != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(err(format!("cuBLAS: cannot set its workspace ({status:?})")));
            }
        }
        let error_flag = stream.alloc_zeros::<i64>(1).map_err(|e| err(format!("alloc: {e}")))?;
        Ok(Gpu {
            ctx,
            stream,
            side,
            blas,
            name: format!("cuda:{ordinal} ({name}, {arch})"),
            compute_major: major,
            arch,
            functions,
            chain_kernels: Mutex::new(HashMap::new()),
            error_flag: Mutex::new(error_flag),
            counters: Mutex::new(Placement::default()),
            index_maps: Mutex::new(HashMap::new()),
            capture: Mutex::new(None),
            _blas_workspace: blas_workspace,
        })
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Placement> {
        // A poisoned lock only means a panic elsewhere mid-count; the counts are still usable.
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn count_upload(&self, bytes: usize) {
        let mut c = self.counters();
        c.uploads += 1;
        c.upload_bytes += bytes;
    }

    pub fn count_download(&self, bytes: usize) {
        let mut c = self.counters();
        c.downloads += 1;
        c.download_bytes += bytes;
    }

    pub fn count_device_op(&self, op: &str) {
        *self.counters().device.entry(op.to_string()).or_insert(0) += 1;
    }

    pub fn count_host_op(&self, op: &str, reason: &str) {
        let mut c = self.counters();
        let e = c.host.entry(op.to_string()).or_insert((0, reason.to_string()));
        e.0 += 1;
    }

    /// Takes the counts so far, starting again from zero.
    pub fn take_counters(&self) -> Placement {
        let mut p = std::mem::take(&mut *self.counters());
        p.backend = self.name.clone();
        p
    }

    /// The kernel specialised for `args`' program and `walk` (`ops/chain/specialise.rs`):
    /// compiled by NVRTC and loaded the first time the program runs so, then reused.
    pub fn chain_kernel(&self, args: &ChainArgs, walk: Walk) -> Result<CudaFunction, RuntimeError> {
        let key = ProgramKey::of(args, walk);
        let mut cache = self.chain_kernels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = cache.get(&key) {
            return Ok(f.clone());
        }
        let k = specialise::kernel(args, walk);
        let image = compile(&k.source(), &format!("{}.cu", k.name), &self.arch, Contraction::Off).map_err(err)?;
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(image))
            .map_err(|e| err(format!("cannot load the chain kernel {}: {e}", k.name)))?;
        let f = module.load_function(&k.name).map_err(|e| err(format!("chain kernel `{}`: {e}", k.name)))?;
        cache.insert(key, f.clone());
        Ok(f)
    }

    /// A compiled kernel by name (the names are fixed at compile time, so absence is a bug in
    /// [`ENTRY_POINTS`], reported as an error rather than a panic).
    pub fn function(&self, name: &str) -> Result<&CudaFunction, RuntimeError> {
        self.functions.get(name).ok_or_else(|| err(format!("kernel `{name}` is not in the compiled module")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry point named here is defined in the source (a typo would only show on a GPU).
    #[test]
    fn entry_points_exist_in_the_source() {
        for name in ENTRY_POINTS {
            let defined = super::super::compile::KERNEL_SOURCE.contains(&format!(" {name}("))
                || super::super::compile::KERNEL_SOURCE.contains(&format!("({name},"));
            assert!(defined, "kernel `{name}` is not defined in kernels.cu");
        }
    }
}
