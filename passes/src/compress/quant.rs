//! The numbers of weight quantization: round-to-nearest (RTN) quantization of groups of weights
//! (a block along the reduction axis, or a whole output channel), the packing of sub-byte codes,
//! and the layouts of `DequantizeLinear` and `MatMulNBits` operands.
//!
//! Everything is computed in `f32` in the order onnxruntime's MLAS quantizer
//! (`BlockwiseQuantizer::quantizeAndTranspose`, used by `MatMulNBitsQuantizer`) computes it, so
//! that for the same weights `asym` and `sym-full` produce the same bytes:
//!
//! - `asym`: `min = min(w, 0)`, `max = max(w, 0)`, `scale = (max − min) / (2^b − 1)`,
//!   `zp = clamp(round(0 − min / scale), 0, 2^b − 1)`, `q = clamp(round(w · (1/scale) + zp),
//!   0, 2^b − 1)`, stored unsigned (`uint8`/`uint4`);
//! - `sym-full`: the weight of largest magnitude `m` (with its sign) maps to `−2^(b−1)`:
//!   `scale = −m / 2^(b−1)` (negative when `m > 0`), `q = clamp(round(w · (1/scale) + 2^(b−1)),
//!   0, 2^b − 1) − 2^(b−1)`; weights of the other sign may clip by up to one step;
//! - `sym` (narrow range, the textbook symmetric scheme): `scale = max|w| / (2^(b−1) − 1)`,
//!   `q = clamp(round(w · (1/scale)), −(2^(b−1) − 1), 2^(b−1) − 1)`, zero point 0.
//!
//! `round` is round-half-away-from-zero (C's `roundf`); `1/scale` is 0 when the scale is 0 (a
//! group of zeros). The scale is rounded to the weight's float type before `1/scale` is taken,
//! as MLAS does for `float16`. With `sym` and `asym` every dequantized weight is within half a
//! step (`|scale| / 2`) of the original, up to `f32` rounding.
//!
//! Codes are kept as unsigned *storage codes* `c ∈ [0, 2^b − 1]` with a zero point `z` in the
//! same domain (`2^(b−1)` for the symmetric schemes), so that the value is `(c − z) · scale` in
//! every format: `MatMulNBits` stores `c` (its implicit zero point is `2^(b−1)`), a signed QDQ
//! tensor stores `c − z`.

use adaptc_ir::DataType;

/// How the grid is placed over a group of weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Narrow symmetric: zero point 0, `scale = max|w| / (2^(b−1) − 1)`.
    Sym,
    /// Full-range symmetric, onnxruntime's `is_symmetric=True`: `scale = −m / 2^(b−1)`.
    SymFull,
    /// Asymmetric with a zero point (onnxruntime's default).
    Asym,
}

impl Scheme {
    /// The option names, in the order `adaptc passes` lists them.
    pub const NAMES: &'static [&'static str] = &["sym", "asym", "sym-full"];

    pub fn parse(name: &str) -> Option<Scheme> {
        match name {
            "sym" => Some(Scheme::Sym),
            "asym" => Some(Scheme::Asym),
            "sym-full" => Some(Scheme::SymFull),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scheme::Sym => "sym",
            Scheme::SymFull => "sym-full",
            Scheme::Asym => "asym",
        }
    }
}

/// Bit width and scheme together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Grid {
    pub bits: u32,
    pub scheme: Scheme,
}

impl Grid {
    pub fn new(bits: u32, scheme: Scheme) -> Grid {
        Grid { bits, scheme }
    }

    /// `2^(b−1)`: the storage code of zero in the symmetric schemes.
    pub fn mid(self) -> i32 {
        1 << (self.bits - 1)
    }

    /// `2^b − 1`: the largest storage code.
    pub fn max_code(self) -> i32 {
        (1 << self.bits) - 1
    }

    /// Whether a QDQ tensor holds signed levels (`int8`/`int4`) rather than codes.
    pub fn signed(self) -> bool {
        self.scheme != Scheme::Asym
    }

    /// Whether a zero-point tensor is stored (`asym` only).
    pub fn has_zero_point(self) -> bool {
        self.scheme == Scheme::Asym
    }

    /// The element type of the quantized tensor in QDQ form.
    pub fn qdq_type(self) -> DataType {
        match (self.bits, self.signed()) {
            (4, true) => DataType::Int4,
            (4, false) => DataType::Uint4,
            (8, true) => DataType::Int8,
            _ => DataType::Uint8,
        }
    }
}

/// The parameters of one group: the scale as stored (rounded to the weight's float type and
/// widened back) and the zero point as a storage code.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupParams {
    pub scale: f32,
    pub zero_point: u8,
}

/// Rounds an `f32` to a float storage type and back (identity for `f32`).
#[inline]
pub fn round_to(dtype: DataType, v: f32) -> f32 {
    match dtype {
        DataType::Float16 => half::f16::from_f32(v).to_f32(),
        DataType::BFloat16 => half::bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// Encodes `f32` values in a float storage type (`f32`, `f16`, `bf16`), little-endian.
pub fn encode_floats(dtype: DataType, values: &[f32]) -> Vec<u8> {
    match dtype {
        DataType::Float16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        DataType::BFloat16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Quantizes one group of weights (finite values) into storage codes (`codes.len() ==
/// values.len()`); the scale is rounded to `dtype` before it is used.
pub fn quantize_group(values: &[f32], grid: Grid, dtype: DataType, codes: &mut [u8]) -> GroupParams {
    debug_assert_eq!(values.len(), codes.len());
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in values {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let max_code = grid.max_code() as f32;
    let mid = grid.mid();
    let (scale, zero_point) = match grid.scheme {
        Scheme::Asym => {
            let (min, max) = (min.min(0.0), max.max(0.0));
            let scale = (max - min) / max_code;
            let zp = if scale != 0.0 { 0.0 - min / scale } else { min };
            let zp = if zp < 0.0 {
                0
            } else if zp > max_code {
                grid.max_code() as u8
            } else {
                zp.round() as u8
            };
            (round_to(dtype, scale), zp)
        }
        Scheme::SymFull => {
            let m = if max.abs() > min.abs() { max } else { min };
            (round_to(dtype, -m / mid as f32), mid as u8)
        }
        Scheme::Sym => {
            let amax = max.abs().max(min.abs());
            (round_to(dtype, amax / (mid - 1) as f32), mid as u8)
        }
    };
    let recip = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    match grid.scheme {
        Scheme::Sym => {
            let limit = (mid - 1) as f32;
            for (c, &v) in codes.iter_mut().zip(values) {
                *c = ((v * recip).round().clamp(-limit, limit) as i32 + mid) as u8;
            }
        }
        Scheme::Asym | Scheme::SymFull => {
            let zp = zero_point as f32;
            for (c, &v) in codes.iter_mut().zip(values) {
                *c = (v * recip + zp).round().clamp(0.0, max_code) as u8;
            }
        }
    }
    GroupParams { scale, zero_point }
}

/// The value of a storage code: `(c − z) · scale`, rounded to `dtype`.
#[inline]
pub fn dequantize_code(code: u8, params: GroupParams, dtype: DataType) -> f32 {
    round_to(dtype, (i32::from(code) - i32::from(params.zero_point)) as f32 * params.scale)
}

/// Packs `bits`-wide codes (2, 4 or 8) into bytes, the first element in the lowest bits (ONNX's
/// raw layout for sub-byte types, and `MatMulNBits`'). A trailing partial byte is zero-padded.
pub fn pack_bits(codes: &[u8], bits: u32) -> Vec<u8> {
    if bits == 8 {
        return codes.to_vec();
    }
    let per_byte = (8 / bits) as usize;
    let mask = (1u8 << bits) - 1;
    codes
        .chunks(per_byte)
        .map(|chunk| chunk.iter().enumerate().fold(0u8, |b, (i, &c)| b | ((c & mask) << (i as u32 * bits))))
        .collect()
}

/// Unpacks `count` codes of `bits` (1, 2, 4 or 8) from `bytes`, low bits first.
pub fn unpack_bits(bytes: &[u8], bits: u32, count: usize) -> Vec<u8> {
    if bits == 8 {
        return bytes[..count.min(bytes.len())].to_vec();
    }
    let per_byte = (8 / bits) as usize;
    let mask = (1u8 << bits) - 1;
    (0..count).map(|i| bytes.get(i / per_byte).map_or(0, |b| (b >> ((i % per_byte) as u32 * bits)) & mask)).collect()
}

/// Sign-extends a `bits`-wide two's-complement field.
pub fn sign_extend(v: u8, bits: u32) -> i32 {
    let shift = 32 - bits;
    ((i32::from(v)) << shift) >> shift
}

/// A 2-D weight quantized in groups along its reduction axis: `N` output channels of `K`
/// reduction elements, each channel cut into `n_blocks` blocks of `block` elements (the last
/// block may be shorter; per-channel quantization is one block of `K`).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedMatrix {
    pub k: usize,
    pub n: usize,
    pub block: usize,
    pub n_blocks: usize,
    pub grid: Grid,
    /// The weight's float type (scales are stored in it).
    pub dtype: DataType,
    /// Storage codes, channel-major: `codes[n · K + k]`.
    pub codes: Vec<u8>,
    /// Group parameters, channel-major: `params[n · n_blocks + b]`.
    pub params: Vec<GroupParams>,
}

impl QuantizedMatrix {
    /// Quantizes the weight `values` (row-major, finite) stored `[K, N]` (`in_out`) or `[N, K]`;
    /// `block` 0 means one group per output channel.
    pub fn quantize(
        values: &[f32],
        k: usize,
        n: usize,
        in_out: bool,
        block: usize,
        grid: Grid,
        dtype: DataType,
    ) -> QuantizedMatrix {
        Self::quantize_with_errors(values, k, n, in_out, block, grid, dtype).0
    }

    /// [`QuantizedMatrix::quantize`], and how far the dequantized weights are from `values`.
    pub fn quantize_with_errors(
        values: &[f32],
        k: usize,
        n: usize,
        in_out: bool,
        block: usize,
        grid: Grid,
        dtype: DataType,
    ) -> (QuantizedMatrix, Errors) {
        debug_assert_eq!(values.len(), k * n);
        let block = if block == 0 { k.max(1) } else { block };
        let n_blocks = k.div_ceil(block);
        // Channel-major values, so that every group is contiguous.
        let transposed;
        let cm: &[f32] = if in_out {
            transposed = transpose(values, k, n);
            &transposed
        } else {
            values
        };
        let mut codes = vec![0u8; k * n];
        let mut params = Vec::with_capacity(n * n_blocks);
        let mut errors = Errors::default();
        for ch in 0..n {
            for b in 0..n_blocks {
                let (start, end) = (ch * k + b * block, ch * k + ((b + 1) * block).min(k));
                let (group, out) = (&cm[start..end], &mut codes[start..end]);
                let p = quantize_group(group, grid, dtype, out);
                let (mut group_max, mut group_sum) = (0f64, 0f64);
                for (&v, &c) in group.iter().zip(out.iter()) {
                    let e = (f64::from(v) - f64::from(dequantize_code(c, p, dtype))).abs();
                    group_max = group_max.max(e);
                    group_sum += e;
                }
                errors.max_abs = errors.max_abs.max(group_max);
                errors.sum_abs += group_sum;
                let step = f64::from(p.scale.abs());
                if step > 0.0 {
                    errors.max_steps = errors.max_steps.max(group_max / step);
                }
                params.push(p);
            }
        }
        errors.count = (k * n) as u64;
        (QuantizedMatrix { k, n, block, n_blocks, grid, dtype, codes, params }, errors)
    }

    /// The group parameters of element `(ch, kk)`.
    pub fn params_of(&self, ch: usize, kk: usize) -> GroupParams {
        self.params[ch * self.n_blocks + kk / self.block]
    }

    /// The dequantized weight in the stored layout (`[K, N]` when `in_out`, else `[N, K]`).
    pub fn dequantized(&self, in_out: bool) -> Vec<f32> {
        let mut out = vec![0f32; self.k * self.n];
        for ch in 0..self.n {
            for kk in 0..self.k {
                let v = dequantize_code(self.codes[ch * self.k + kk], self.params_of(ch, kk), self.dtype);
                out[if in_out { kk * self.n + ch } else { ch * self.k + kk }] = v;
            }
        }
        out
    }

    /// Scales, channel-major (`[N, n_blocks]` flattened).
    pub fn scales(&self) -> Vec<f32> {
        self.params.iter().map(|p| p.scale).collect()
    }

    // ----- DequantizeLinear (QDQ) ----------------------------------------------------------------

    /// The quantized tensor's bytes in the weight's stored layout: signed levels for the
    /// symmetric schemes, codes for `asym`; sub-byte types packed low nibble first.
    pub fn qdq_data(&self, in_out: bool) -> Vec<u8> {
        let mid = self.grid.mid() as u8;
        let levels: Vec<u8> = if self.grid.signed() {
            self.codes.iter().map(|&c| c.wrapping_sub(mid)).collect()
        } else {
            self.codes.clone()
        };
        // Codes are channel-major ([N, K]); a `[K, N]` weight needs them transposed.
        let levels = if in_out { transpose(&levels, self.n, self.k) } else { levels };
        pack_bits(&levels, self.grid.bits)
    }

    /// Dims of the scale (and zero-point) tensor of a `DequantizeLinear` in the stored layout:
    /// `[N]` per channel; blocked `[n_blocks, N]` (`in_out`) or `[N, n_blocks]`.
    pub fn qdq_param_dims(&self, per_channel: bool, in_out: bool) -> Vec<u64> {
        let (n, nb) = (self.n as u64, self.n_blocks as u64);
        match (per_channel, in_out) {
            (true, _) => vec![n],
            (false, true) => vec![nb, n],
            (false, false) => vec![n, nb],
        }
    }

    /// `f` of each group, in the order of [`QuantizedMatrix::qdq_param_dims`].
    fn qdq_params_in_order<T>(&self, in_out: bool, f: impl Fn(&GroupParams) -> T) -> Vec<T> {
        if in_out {
            (0..self.n_blocks)
                .flat_map(|b| (0..self.n).map(move |ch| (ch, b)))
                .map(|(ch, b)| f(&self.params[ch * self.n_blocks + b]))
                .collect()
        } else {
            self.params.iter().map(f).collect()
        }
    }

    /// The scales in [`QuantizedMatrix::qdq_param_dims`] order.
    pub fn qdq_scales(&self, in_out: bool) -> Vec<f32> {
        self.qdq_params_in_order(in_out, |p| p.scale)
    }

    /// The zero points (`asym`), packed in [`QuantizedMatrix::qdq_param_dims`] order.
    pub fn qdq_zero_points(&self, in_out: bool) -> Vec<u8> {
        pack_bits(&self.qdq_params_in_order(in_out, |p| p.zero_point), self.grid.bits)
    }

    // ----- MatMulNBits -------------------------------------------------------------------------

    /// Bytes of one block in `MatMulNBits`' `B`: `block · bits / 8`.
    pub fn blob_size(&self) -> usize {
        self.block * self.grid.bits as usize / 8
    }

    /// `MatMulNBits`' `B`: `[N, n_blocks, blob]` uint8, codes of each block packed low bits
    /// first; the tail of a short last block is zero.
    pub fn matmulnbits_b(&self) -> Vec<u8> {
        let blob = self.blob_size();
        let bits = self.grid.bits;
        let mut out = vec![0u8; self.n * self.n_blocks * blob];
        for (ch, row) in out.chunks_exact_mut(self.n_blocks * blob).enumerate() {
            let codes = &self.codes[ch * self.k..(ch + 1) * self.k];
            for (dst, block) in row.chunks_exact_mut(blob).zip(codes.chunks(self.block)) {
                if bits == 8 {
                    dst[..block.len()].copy_from_slice(block);
                } else {
                    let per_byte = (8 / bits) as usize;
                    for (byte, pack) in dst.iter_mut().zip(block.chunks(per_byte)) {
                        *byte = pack.iter().enumerate().fold(0u8, |b, (i, &c)| b | (c << (i as u32 * bits)));
                    }
                }
            }
        }
        out
    }

    /// Bytes of one channel's zero points: `ceil(n_blocks · bits / 8)`.
    pub fn zero_point_row_bytes(&self) -> usize {
        (self.n_blocks * self.grid.bits as usize).div_ceil(8)
    }

    /// `MatMulNBits`' `zero_points` (`asym`): `[N, ceil(n_blocks · bits / 8)]` uint8, each
    /// channel's codes packed low bits first; an unused trailing field holds `2^(b−1)`, as MLAS
    /// leaves it.
    pub fn matmulnbits_zero_points(&self) -> Vec<u8> {
        let per_byte = 8 / self.grid.bits as usize;
        let mut out = Vec::with_capacity(self.n * self.zero_point_row_bytes());
        for ch in 0..self.n {
            let mut zps: Vec<u8> =
                self.params[ch * self.n_blocks..(ch + 1) * self.n_blocks].iter().map(|p| p.zero_point).collect();
            zps.resize(self.n_blocks.next_multiple_of(per_byte), self.grid.mid() as u8);
            out.extend(pack_bits(&zps, self.grid.bits));
        }
        out
    }
}

/// How far dequantized weights are from the originals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Errors {
    pub max_abs: f64,
    pub sum_abs: f64,
    /// The largest error in units of its group's `|scale|`.
    pub max_steps: f64,
    pub count: u64,
}

impl Errors {
    pub fn mean_abs(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_abs / self.count as f64
        }
    }
}

/// `src` stored `[rows, cols]` row-major, transposed to `[cols, rows]`. Goes through a small
/// tile so that both sides are read and written in runs (power-of-two strides would otherwise
/// make every access of a tile land in the same cache set).
pub fn transpose<T: Copy + Default>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    const TILE: usize = 32;
    let mut out = vec![T::default(); rows * cols];
    let mut tile = [[T::default(); TILE]; TILE];
    for r0 in (0..rows).step_by(TILE) {
        let h = (rows - r0).min(TILE);
        for c0 in (0..cols).step_by(TILE) {
            let w = (cols - c0).min(TILE);
            for r in 0..h {
                let row = &src[(r0 + r) * cols + c0..(r0 + r) * cols + c0 + w];
                for (c, &v) in row.iter().enumerate() {
                    tile[c][r] = v;
                }
            }
            for (c, t) in tile.iter().enumerate().take(w) {
                out[(c0 + c) * rows + r0..(c0 + c) * rows + r0 + h].copy_from_slice(&t[..h]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const F32: DataType = DataType::Float;

    fn roundtrip(values: &[f32], grid: Grid) -> (Vec<f32>, GroupParams) {
        let mut codes = vec![0; values.len()];
        let p = quantize_group(values, grid, F32, &mut codes);
        (codes.iter().map(|&c| dequantize_code(c, p, F32)).collect(), p)
    }

    #[test]
    fn sym_is_narrow_and_exact_at_the_extremes() {
        let w = [0.5, -1.27, 0.0, 1.0];
        let mut codes = [0u8; 4];
        let p = quantize_group(&w, Grid::new(8, Scheme::Sym), F32, &mut codes);
        assert_eq!(p.zero_point, 128);
        assert!((p.scale - 0.01).abs() < 1e-7);
        assert_eq!(codes.map(|c| c as i32 - 128), [50, -127, 0, 100]);
        let (d, p) = roundtrip(&w, Grid::new(4, Scheme::Sym));
        assert!((p.scale - 1.27 / 7.0).abs() < 1e-7);
        for (a, b) in w.iter().zip(&d) {
            assert!((a - b).abs() <= p.scale / 2.0 * 1.000_01, "{a} {b}");
        }
    }

    #[test]
    fn asym_matches_the_mlas_formulas() {
        // min -1, max 2: scale 3/15, zp round(5) = 5.
        let w = [-1.0, 2.0, 0.3, 0.1];
        let mut codes = [0u8; 4];
        let p = quantize_group(&w, Grid::new(4, Scheme::Asym), F32, &mut codes);
        assert_eq!(p.scale, 3.0f32 / 15.0);
        assert_eq!(p.zero_point, 5);
        let r = 1.0 / p.scale;
        let expect = w.map(|v| (v * r + 5.0).round().clamp(0.0, 15.0) as u8);
        assert_eq!(codes, expect);
        assert_eq!(codes[0], 0);
        assert_eq!(codes[1], 15);
        // All-positive groups still include zero; all zeros give scale 0 and code zp.
        let p = quantize_group(&[1.0, 2.0], Grid::new(8, Scheme::Asym), F32, &mut [0; 2]);
        assert_eq!((p.scale, p.zero_point), (2.0 / 255.0, 0));
        let mut codes = [9u8; 3];
        let p = quantize_group(&[0.0; 3], Grid::new(4, Scheme::Asym), F32, &mut codes);
        assert_eq!((p.scale, p.zero_point, codes), (0.0, 0, [0, 0, 0]));
    }

    #[test]
    fn sym_full_maps_the_extreme_to_minus_half_range() {
        let w = [0.8, -0.2, 0.5];
        let mut codes = [0u8; 3];
        let p = quantize_group(&w, Grid::new(4, Scheme::SymFull), F32, &mut codes);
        assert_eq!(p.scale, -0.8 / 8.0);
        assert_eq!(p.zero_point, 8);
        assert_eq!(codes[0], 0); // level -8
        assert_eq!(dequantize_code(codes[0], p, F32), 0.8);
        let w = [-0.8, 0.8]; // |max| == |min|: the minimum wins, +0.8 clips to level 7
        let (d, p) = roundtrip(&w, Grid::new(4, Scheme::SymFull));
        assert_eq!(p.scale, 0.1);
        assert_eq!(d, vec![-0.8, 0.7]);
    }

    #[test]
    fn error_is_at_most_half_a_step() {
        let mut s = 7u64;
        let values: Vec<f32> = (0..257)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 3.0
            })
            .collect();
        for bits in [4, 8] {
            for scheme in [Scheme::Sym, Scheme::Asym] {
                let (d, p) = roundtrip(&values, Grid::new(bits, scheme));
                let worst = values.iter().zip(&d).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst <= p.scale.abs() / 2.0 * 1.000_01, "{bits} {scheme:?}: {worst} vs {}", p.scale);
            }
        }
    }

    #[test]
    fn int4_packing_round_trips_low_nibble_first() {
        let codes: Vec<u8> = (0..11).map(|i| (i * 7 % 16) as u8).collect();
        let packed = pack_bits(&codes, 4);
        assert_eq!(packed.len(), 6);
        assert_eq!(packed[0], codes[0] | (codes[1] << 4));
        assert_eq!(packed[5], codes[10]);
        assert_eq!(unpack_bits(&packed, 4, 11), codes);
        let two: Vec<u8> = (0..9).map(|i| (i % 4) as u8).collect();
        assert_eq!(unpack_bits(&pack_bits(&two, 2), 2, 9), two);
        assert_eq!(sign_extend(0xF, 4), -1);
        assert_eq!(sign_extend(0x8, 4), -8);
        assert_eq!(sign_extend(0x7, 4), 7);
        assert_eq!(sign_extend(0x80, 8), -128);
    }

    #[test]
    fn matrix_layouts_agree() {
        // W stored [K=5, N=3] (in_out) and the same W transposed [N, K]: same groups.
        let (k, n) = (5, 3);
        let w_in_out: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut w_out_in = vec![0f32; k * n];
        for kk in 0..k {
            for ch in 0..n {
                w_out_in[ch * k + kk] = w_in_out[kk * n + ch];
            }
        }
        let g = Grid::new(4, Scheme::Asym);
        let a = QuantizedMatrix::quantize(&w_in_out, k, n, true, 2, g, F32);
        let b = QuantizedMatrix::quantize(&w_out_in, k, n, false, 2, g, F32);
        assert_eq!(a, b);
        assert_eq!((a.n_blocks, a.block), (3, 2));
        assert_eq!(a.qdq_param_dims(false, true), vec![3, 3]);
        assert_eq!(a.qdq_param_dims(false, false), vec![3, 3]);
        // B: [N, 3 blocks, 1 byte]; the last block has one element, the high nibble is padding.
        let bb = a.matmulnbits_b();
        assert_eq!(bb.len(), 9);
        assert_eq!(bb[2] >> 4, 0);
        assert_eq!(bb[0], a.codes[0] | (a.codes[1] << 4));
        // Zero points: 3 blocks → 2 bytes per channel, the unused nibble is 8.
        let zp = a.matmulnbits_zero_points();
        assert_eq!(zp.len(), 6);
        assert_eq!(zp[1] >> 4, 8);
        // Dequantized values come back in either layout.
        let da = a.dequantized(true);
        let db = a.dequantized(false);
        for kk in 0..k {
            for ch in 0..n {
                assert_eq!(da[kk * n + ch], db[ch * k + kk]);
            }
        }
        // QDQ scales [n_blocks, N] for in_out.
        assert_eq!(a.qdq_scales(true)[1], a.params[n_blocks_index(1, 0, 3)].scale);
    }

    fn n_blocks_index(ch: usize, b: usize, nb: usize) -> usize {
        ch * nb + b
    }

    #[test]
    fn transpose_handles_ragged_tiles() {
        for (r, c) in [(1, 1), (3, 70), (33, 31), (64, 64), (65, 2)] {
            let src: Vec<u32> = (0..(r * c) as u32).collect();
            let t = transpose(&src, r, c);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(t[j * r + i], src[i * c + j], "{r}x{c}");
                }
            }
            assert_eq!(transpose(&t, c, r), src);
        }
    }

    #[test]
    fn float16_scales_are_rounded_before_use() {
        let w = [0.1f32, -0.3, 0.7];
        let mut codes = [0u8; 3];
        let p = quantize_group(&w, Grid::new(8, Scheme::Sym), DataType::Float16, &mut codes);
        assert_eq!(p.scale, half::f16::from_f32(0.7 / 127.0).to_f32());
        assert_eq!(encode_floats(DataType::Float16, &[p.scale]).len(), 2);
    }
}
