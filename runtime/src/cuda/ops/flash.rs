//! The flash kernels of `SoftmaxAttention` (`flash_attn_*` in `kernels.cu`): with
//! `products="bf16"` and a head size they are built for, attention runs as three fused kernels
//! on bf16 tensor cores that never store the `[…, M, N]` scores — the forward (y, lse), then
//! δ = Σ dy ⊙ y per row, `da` per block of query rows and `db`, `dv` per block of keys. The
//! blocked-cuBLAS path (`attention.rs`) stays for f32 products, other head sizes and devices
//! older than sm_80; `ADAPTC_CUDA_FLASH=0` forces it (for comparisons).
//!
//! Why: at Llama's 2048 tokens the blocked path moves the f32 scores through memory about ten
//! times per layer and step (4 GiB each at batch 8 × 32 heads), which costs more than the
//! step's GEMMs; the flash kernels read each operand tile once per tile pair.

use super::{launch, DevResult, Gpu};
use crate::cuda::launch::Layout;
use cudarc::driver::LaunchConfig;

/// Head sizes (K = Dv) the kernels are instantiated for (`FLASH_FWD` … in kernels.cu).
pub const HEAD_SIZES: [usize; 2] = [32, 64];

/// Query rows (forward, `da`) or keys (`db`, `dv`) per block: `FA_TILE` in kernels.cu.
const TILE: usize = 64;

/// Threads per block: 4 warps of 16 rows (`FA_THREADS`).
const THREADS: u32 = 128;

/// Whether a call with these dims takes the flash kernels on `gpu`.
pub fn applies(gpu: &Gpu, bf16_products: bool, k: usize, dv: usize) -> bool {
    bf16_products && k == dv && HEAD_SIZES.contains(&k) && gpu.compute_major >= 8 && enabled()
}

/// `ADAPTC_CUDA_FLASH=0` turns the flash kernels off.
fn enabled() -> bool {
    std::env::var("ADAPTC_CUDA_FLASH").map_or(true, |v| v != "0")
}

/// One block per (product, tile) up to 2¹⁶ blocks; the kernels stride over the rest.
fn grid(products: usize, rows: usize) -> LaunchConfig {
    let jobs = products.saturating_mul(rows.div_ceil(TILE)).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (jobs, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// The bias as the kernels read it: address (0 when absent), batch layout, row and column
/// strides.
pub type Bias = (u64, Layout, i64, i64);

/// The operands' addresses and dims shared by every launch: `a [P, M, D]`, `b [P, D, N]`,
/// `v [P, N, D]` (and the backward's `dy [P, M, D]`), all f32 or all bf16 (`bf16`: read as
/// stored).
pub struct Call {
    pub a: u64,
    pub b: u64,
    pub v: u64,
    pub bias: Bias,
    pub products: usize,
    pub m: usize,
    pub n: usize,
    pub d: usize,
    pub masked_rows_zero: i32,
    pub bf16: bool,
}

impl Call {
    fn name(&self, kernel: &str) -> String {
        format!("flash_attn_{kernel}_d{}{}", self.d, if self.bf16 { "_bf16" } else { "" })
    }

    /// `y` and `lse` (device addresses of `[P, M, D]` and `[P, M]` f32 buffers).
    pub fn forward(&self, gpu: &Gpu, y: u64, lse: u64) -> DevResult<()> {
        let (bp, bl, brs, bcs) = self.bias;
        let (p, m, n) = (self.products as i64, self.m as i64, self.n as i64);
        let name = self.name("fwd");
        let cfg = grid(self.products, self.m);
        launch!(
            gpu,
            &name,
            cfg,
            &self.a,
            &self.b,
            &self.v,
            &bp,
            &bl,
            &brs,
            &bcs,
            &y,
            &lse,
            &p,
            &m,
            &n,
            &self.masked_rows_zero
        )
    }

    /// `da`, `db`, `dv` from the forward's `y`, `lse` and the output gradient `dy`; `delta`
    /// is a `[P, M]` f32 scratch buffer.
    pub fn backward(
        &self,
        gpu: &Gpu,
        (y, lse, dy): (u64, u64, u64),
        delta: u64,
        (da, db, dv): (u64, u64, u64),
    ) -> DevResult<()> {
        let (bp, bl, brs, bcs) = self.bias;
        let (p, m, n, d) = (self.products as i64, self.m as i64, self.n as i64, self.d as i64);
        let rows = p * m;
        let warps_per_block = 8usize;
        let dot = LaunchConfig {
            grid_dim: ((self.products * self.m).div_ceil(warps_per_block).clamp(1, 1 << 16) as u32, 1, 1),
            block_dim: (32 * warps_per_block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let row_dot = if self.bf16 { "attn_row_dot_bf16" } else { "attn_row_dot_f32" };
        launch!(gpu, row_dot, dot, &dy, &y, &delta, &rows, &d)?;
        let zero = self.masked_rows_zero;
        let name = self.name("bwd_da");
        launch!(
            gpu,
            &name,
            grid(self.products, self.m),
            &self.a,
            &self.b,
            &self.v,
            &bp,
            &bl,
            &brs,
            &bcs,
            &lse,
            &delta,
            &dy,
            &da,
            &p,
            &m,
            &n,
            &zero
        )?;
        let name = self.name("bwd_dbv");
        launch!(
            gpu,
            &name,
            grid(self.products, self.n),
            &self.a,
            &self.b,
            &self.v,
            &bp,
            &bl,
            &brs,
            &bcs,
            &lse,
            &delta,
            &dy,
            &db,
            &dv,
            &p,
            &m,
            &n,
            &zero
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flash_kernel_is_an_entry_point() {
        for d in HEAD_SIZES {
            for k in ["fwd", "bwd_da", "bwd_dbv"] {
                for (suffix, t) in [("", "float"), ("_bf16", "bf16_t")] {
                    let name = format!("flash_attn_{k}_d{d}{suffix}");
                    assert!(crate::cuda::ENTRY_POINTS.contains(&name.as_str()), "{name}");
                    let instance = format!("({name}, {d}, {t})");
                    assert!(crate::cuda::KERNEL_SOURCE.contains(&instance), "{name} instantiated for {d} and {t}");
                }
            }
        }
        assert!(crate::cuda::ENTRY_POINTS.contains(&"attn_row_dot_f32"));
        assert!(crate::cuda::ENTRY_POINTS.contains(&"attn_row_dot_bf16"));
    }

    #[test]
    fn grid_covers_tiles_and_stays_within_limits() {
        assert_eq!(grid(256, 2048).grid_dim.0, 256 * 32);
        assert_eq!(grid(4, 100).grid_dim.0, 8);
        assert_eq!(grid(0, 0).grid_dim.0, 1);
        assert_eq!(grid(1 << 20, 4096).grid_dim.0, 1 << 16);
        assert_eq!(grid(1, 1).block_dim.0, THREADS);
    }
}
