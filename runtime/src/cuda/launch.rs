//! What a kernel launch is made of: [`Layout`] (the strided iteration descriptor `kernels.cu`
//! reads), grid sizes, raw device pointers, and the error type of device ops.

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig};

use crate::error::{KernelError, RuntimeError};

/// The most dims a [`Layout`] holds (after merging); more sends the op to the host.
pub const MAX_RANK: usize = 8;
/// Threads per block of every 1-D launch (`BLOCK` in `kernels.cu`).
pub const BLOCK: u32 = 256;

/// Why a device op did not produce outputs.
#[derive(Debug)]
pub enum DevError {
    /// A valid case the device path does not cover (an element type, a broadcast form): the
    /// instruction runs on the host instead. The text says why, for `--stats`.
    Host(String),
    /// The inputs are invalid for the op (the same errors the CPU kernel gives).
    Kernel(KernelError),
    /// The driver or cuBLAS failed.
    Device(String),
}

impl std::fmt::Display for DevError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DevError::Host(r) | DevError::Device(r) => f.write_str(r),
            DevError::Kernel(k) => write!(f, "{k}"),
        }
    }
}

impl From<KernelError> for DevError {
    fn from(e: KernelError) -> Self {
        DevError::Kernel(e)
    }
}

impl From<cudarc::driver::DriverError> for DevError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        DevError::Device(e.to_string())
    }
}

impl From<RuntimeError> for DevError {
    fn from(e: RuntimeError) -> Self {
        DevError::Device(e.to_string())
    }
}

pub type DevResult<T> = Result<T, DevError>;

/// Sends an instruction to the host with a reason.
pub fn host<T>(reason: impl Into<String>) -> DevResult<T> {
    Err(DevError::Host(reason.into()))
}

/// Up to four operands walked over one iteration shape (`struct Layout` in `kernels.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Layout {
    rank: i32,
    pad: i32,
    shape: [i64; MAX_RANK],
    st: [[i64; MAX_RANK]; 4],
}

// SAFETY: a plain `#[repr(C)]` struct of integers, laid out as the C struct it mirrors.
unsafe impl DeviceRepr for Layout {}

impl Layout {
    /// A layout over `shape` with one stride list (in elements) per operand. Size-1 dims are
    /// dropped and dims that are contiguous for every operand merged, so the kernels divide
    /// as few times as possible.
    pub fn new(shape: &[usize], strides: &[&[i64]]) -> DevResult<Layout> {
        debug_assert!(strides.len() <= 4 && strides.iter().all(|s| s.len() == shape.len()));
        let dims = merge_dims(shape, strides);
        if dims.len() > MAX_RANK {
            return host(format!("{} dims after merging (the device loops take {MAX_RANK})", dims.len()));
        }
        let mut l = Layout { rank: dims.len() as i32, ..Layout::default() };
        for (d, (n, st)) in dims.into_iter().enumerate() {
            l.shape[d] = n;
            for (k, s) in st.into_iter().enumerate() {
                l.st[k][d] = s;
            }
        }
        Ok(l)
    }
}

/// `shape` walked with one stride list per operand, as (size, strides) per dim: size-1 dims
/// dropped and adjacent dims merged where every operand is contiguous across them, so kernels
/// divide as few times as possible (none for a single dim).
pub fn merge_dims(shape: &[usize], strides: &[&[i64]]) -> Vec<(i64, Vec<i64>)> {
    let mut dims: Vec<(i64, Vec<i64>)> = Vec::new();
    for (d, &n) in shape.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let st: Vec<i64> = strides.iter().map(|s| s[d]).collect();
        if let Some((pn, pst)) = dims.last_mut() {
            if pst.iter().zip(&st).all(|(&p, &s)| p == s * n as i64) {
                *pn *= n as i64;
                *pst = st;
                continue;
            }
        }
        dims.push((n as i64, st));
    }
    dims
}

/// Row-major strides of `shape`, in elements.
pub fn contiguous(shape: &[usize]) -> Vec<i64> {
    let mut st = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for d in (0..shape.len()).rev() {
        st[d] = acc;
        acc *= shape[d] as i64;
    }
    st
}

/// Strides of an operand of shape `small` broadcast (numpy rules) to `out`: 0 along stretched
/// or missing dims.
pub fn broadcast(small: &[usize], out: &[usize]) -> Vec<i64> {
    let own = contiguous(small);
    let pad = out.len() - small.len();
    (0..out.len()).map(|d| if d < pad || small[d - pad] == 1 { 0 } else { own[d - pad] }).collect()
}

/// A grid-stride launch over `n` elements.
pub fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One block per row (grid-stride over rows beyond the grid).
pub fn per_row(rows: usize) -> LaunchConfig {
    let blocks = rows.clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// Blocks of 32 columns × 8 row lanes (the column-sum kernels).
pub fn per_column_tile(cols: usize) -> LaunchConfig {
    let blocks = cols.div_ceil(32).clamp(1, i32::MAX as usize) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 }
}

/// The device address of a buffer, as the `u64` a kernel's pointer parameter takes.
pub fn addr<T>(mem: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    // With event tracking off (one stream) the guard does nothing; the address stays valid
    // for as long as `mem` lives, which the caller ensures past the launch.
    let (p, _guard) = mem.device_ptr(stream);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_merge_contiguous_dims_and_drop_ones() {
        let shape = [2, 3, 1, 4];
        let l = Layout::new(&shape, &[&contiguous(&shape)]).unwrap();
        assert_eq!((l.rank, l.shape[0], l.st[0][0]), (1, 24, 1));
        // A transpose of the last two dims cannot merge them.
        let l = Layout::new(&[2, 4, 3], &[&[12, 1, 4], &contiguous(&[2, 4, 3])]).unwrap();
        assert_eq!(l.rank, 3);
        // A broadcast row: [1, 4] over [3, 4] keeps both dims (stride 0 then 1).
        let l = Layout::new(&[3, 4], &[&broadcast(&[1, 4], &[3, 4]), &contiguous(&[3, 4])]).unwrap();
        assert_eq!((l.rank, l.st[0][0], l.st[0][1]), (2, 0, 1));
        assert!(Layout::new(&[2; 9], &[&[1, 2, 4, 8, 16, 32, 64, 128, 256]]).is_err());
    }

    #[test]
    fn any_number_of_operands_merge_where_all_are_contiguous() {
        let shape = [2, 3, 4];
        let c = contiguous(&shape);
        // Six contiguous operands and a scalar: one dim.
        let ops: Vec<&[i64]> = vec![&c, &c, &c, &c, &c, &c, &[0, 0, 0]];
        assert_eq!(merge_dims(&shape, &ops), vec![(24, vec![1, 1, 1, 1, 1, 1, 0])]);
        // A [4] row broadcast over [2, 3, 4]: the two leading dims merge, the row's does not.
        let row = broadcast(&[4], &shape);
        assert_eq!(merge_dims(&shape, &[&c, &row]), vec![(6, vec![4, 0]), (4, vec![1, 1])]);
    }
}
