// adaptc's CUDA kernels, compiled at run time by NVRTC for the device's architecture, after
// prelude.cuh (types, conventions, bf16 conversions, the elementwise op tables): compile.rs
// `KERNEL_SOURCE` is the two files one after the other.

// ---------------------------------------------------------------- block reductions

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = nanmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_min(float v) {
    for (int o = 16; o > 0; o >>= 1) v = nanmin(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Reduces `v` over the block (blockDim.x a multiple of 32, at most 1024); every thread gets
// the result. `kind`: 0 sum, 1 max, 2 min.
__device__ float block_reduce(float v, int kind) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = kind == 0 ? warp_sum(v) : kind == 1 ? warp_max(v) : warp_min(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    float ident = kind == 0 ? 0.0f : kind == 1 ? -INFINITY : INFINITY;
    float w = lane < nwarps ? part[lane] : ident;
    w = kind == 0 ? warp_sum(w) : kind == 1 ? warp_max(w) : warp_min(w);
    return w;
}


extern "C" __global__ void unary_f32(int op, const float* x, float* y, i64 n, float a, float b) {
    GRID_LOOP(i, n) { y[i] = unary_op(op, x[i], a, b); }
}

extern "C" __global__ void is_nan_f32(const float* x, u8* y, i64 n) {
    GRID_LOOP(i, n) { y[i] = isnan(x[i]) ? 1 : 0; }
}


// Binary arithmetic with numpy broadcasting: operands 0 and 1 of `L`, output contiguous.
// Storage type T is read through LOAD (to f32) and written through STORE (from f32), so a bf16
// result is the f32 result rounded once. For bf16 Add, Sub, Max and Min that equals the exact
// result rounded once (the f32 sum of two bf16 values is exact, or too far from a bf16 tie to
// round differently), and for Mul unless the product is an f32 subnormal.
#define BINARY(name, T, LOAD, STORE)                                                               \
    extern "C" __global__ void name(int op, Layout L, const T* a, const T* b, T* y, i64 n) {       \
        GRID_LOOP(i, n) {                                                                          \
            float u = LOAD(a[offset_of(L, 0, i)]), v = LOAD(b[offset_of(L, 1, i)]);                \
            y[i] = STORE(binary_op(op, u, v));                                                     \
        }                                                                                          \
    }
BINARY(binary_f32, float, f32_to_f32, f32_to_f32)
BINARY(binary_bf16, bf16_t, bf16_to_f32, f32_to_bf16)

// Comparisons (0 Equal, 1 Less, 2 LessOrEqual, 3 Greater, 4 GreaterOrEqual) into bool bytes.
#define COMPARE(name, T)                                                                           \
    extern "C" __global__ void name(int op, Layout L, const T* a, const T* b, u8* y, i64 n) {      \
        GRID_LOOP(i, n) {                                                                          \
            T u = a[offset_of(L, 0, i)], v = b[offset_of(L, 1, i)];                                \
            bool r = op == 0 ? u == v : op == 1 ? u < v : op == 2 ? u <= v : op == 3 ? u > v : u >= v; \
            y[i] = r ? 1 : 0;                                                                      \
        }                                                                                          \
    }
COMPARE(compare_f32, float)
COMPARE(compare_i64, i64)
COMPARE(compare_i32, int)

// Logic on bool bytes: 0 And, 1 Or, 2 Xor.
extern "C" __global__ void logic_u8(int op, Layout L, const u8* a, const u8* b, u8* y, i64 n) {
    GRID_LOOP(i, n) {
        bool u = a[offset_of(L, 0, i)] != 0, v = b[offset_of(L, 1, i)] != 0;
        y[i] = (op == 0 ? (u && v) : op == 1 ? (u || v) : (u != v)) ? 1 : 0;
    }
}

extern "C" __global__ void not_u8(const u8* x, u8* y, i64 n) {
    GRID_LOOP(i, n) { y[i] = x[i] ? 0 : 1; }
}

// Where(cond, a, b): operands 0 (cond), 1 (a), 2 (b) of `L`; one kernel per element width.
#define WHERE(name, T)                                                                             \
    extern "C" __global__ void name(Layout L, const u8* c, const T* a, const T* b, T* y, i64 n) {  \
        GRID_LOOP(i, n) { y[i] = c[offset_of(L, 0, i)] ? a[offset_of(L, 1, i)] : b[offset_of(L, 2, i)]; } \
    }
WHERE(where_b1, unsigned char)
WHERE(where_b2, unsigned short)
WHERE(where_b4, unsigned int)
WHERE(where_b8, unsigned long long)

// Strided copy: y[ybase + offset(1, i)] = x[xbase + offset(0, i)] over the iteration shape.
// Transpose, Expand, Slice, Concat and Split are all this kernel with different layouts.
#define COPY(name, T)                                                                              \
    extern "C" __global__ void name(Layout L, const T* x, i64 xbase, T* y, i64 ybase, i64 n) {     \
        GRID_LOOP(i, n) { y[ybase + offset_of(L, 1, i)] = x[xbase + offset_of(L, 0, i)]; }         \
    }
COPY(copy_b1, unsigned char)
COPY(copy_b2, unsigned short)
COPY(copy_b4, unsigned int)
COPY(copy_b8, unsigned long long)

// Gather along an axis: x viewed as [outer, dim, inner], indices flattened to `nidx`.
// A bad index writes zero and sets `err` to 1 (checked after the run).
#define GATHER(name, T, I)                                                                         \
    extern "C" __global__ void name(const T* x, const I* idx, T* y, i64 outer, i64 dim, i64 nidx,  \
                                    i64 inner, i64* err) {                                         \
        i64 n = outer * nidx * inner;                                                              \
        GRID_LOOP(i, n) {                                                                          \
            i64 in_ = i % inner, r = i / inner, j = r % nidx, o = r / nidx;                        \
            i64 k = (i64)idx[j];                                                                   \
            if (k < 0) k += dim;                                                                   \
            if (k < 0 || k >= dim) {                                                               \
                atomicCAS((unsigned long long*)err, 0ull, 1ull);                                   \
                y[i] = (T)0;                                                                       \
            } else {                                                                               \
                y[i] = x[(o * dim + k) * inner + in_];                                             \
            }                                                                                      \
        }                                                                                          \
    }
GATHER(gather_b4_i64, unsigned int, i64)
GATHER(gather_b8_i64, unsigned long long, i64)
GATHER(gather_b1_i64, unsigned char, i64)
GATHER(gather_b2_i64, unsigned short, i64)
GATHER(gather_b4_i32, unsigned int, int)
GATHER(gather_b8_i32, unsigned long long, int)

// GatherND: `idx` holds `tuples` index tuples of `P.k` int64 components; tuple t addresses
// the slice of `inner` elements at (t / per_batch) * batch_stride + Σ_d idx[t][d] · P.st[d]
// (batch_stride 0 without batch dims), and y[t * inner + j] = x[that + j]. A component wraps
// once when negative (+ P.dim[d]); one still outside [0, P.dim[d]) writes zero and sets `err`
// to 1, as Gather does.
struct NdTuple {
    int k;
    int pad_;
    i64 dim[MAXR];
    i64 st[MAXR];
};
#define GATHER_ND(name, T)                                                                         \
    extern "C" __global__ void name(NdTuple P, const T* x, const i64* idx, T* y, i64 tuples,       \
                                    i64 per_batch, i64 batch_stride, i64 inner, i64* err) {        \
        i64 n = tuples * inner;                                                                    \
        GRID_LOOP(i, n) {                                                                          \
            i64 j = i % inner, t = i / inner;                                                      \
            i64 off = (t / per_batch) * batch_stride;                                              \
            const i64* tup = idx + t * P.k;                                                        \
            bool bad = false;                                                                      \
            for (int d = 0; d < P.k; ++d) {                                                        \
                i64 v = tup[d];                                                                    \
                if (v < 0) v += P.dim[d];                                                          \
                if (v < 0 || v >= P.dim[d]) bad = true;                                            \
                off += v * P.st[d];                                                                \
            }                                                                                      \
            if (bad) {                                                                             \
                atomicCAS((unsigned long long*)err, 0ull, 1ull);                                   \
                y[i] = (T)0;                                                                       \
            } else {                                                                               \
                y[i] = x[off + j];                                                                 \
            }                                                                                      \
        }                                                                                          \
    }
GATHER_ND(gather_nd_b1, unsigned char)
GATHER_ND(gather_nd_b2, unsigned short)
GATHER_ND(gather_nd_b4, unsigned int)
GATHER_ND(gather_nd_b8, unsigned long long)

// Casts between the element types the device holds. bool is a byte 0/1.
#define CAST(name, S, D, EXPR)                                                                     \
    extern "C" __global__ void name(const S* x, D* y, i64 n) {                                     \
        GRID_LOOP(i, n) { S v = x[i]; y[i] = (D)(EXPR); }                                          \
    }
CAST(cast_f32_i64, float, i64, v)
CAST(cast_f32_i32, float, int, v)
CAST(cast_f32_bool, float, u8, v != 0.0f)
CAST(cast_i64_f32, i64, float, v)
CAST(cast_i64_i32, i64, int, v)
CAST(cast_i64_bool, i64, u8, v != 0)
CAST(cast_i32_f32, int, float, v)
CAST(cast_i32_i64, int, i64, v)
CAST(cast_i32_bool, int, u8, v != 0)
CAST(cast_bool_f32, u8, float, v ? 1.0f : 0.0f)
CAST(cast_bool_i64, u8, i64, v ? 1 : 0)
CAST(cast_bool_i32, u8, int, v ? 1 : 0)
CAST(cast_f32_bf16, float, bf16_t, f32_to_bf16(v))
CAST(cast_bf16_f32, bf16_t, float, bf16_to_f32(v))
CAST(cast_bf16_bool, bf16_t, u8, (v & 0x7fffu) != 0)  // ±0 → false, NaN → true
CAST(cast_bool_bf16, u8, bf16_t, v ? 0x3f80u : 0u)     // 1.0 is 0x3f80

// dx[map[i] − 1] += dy[i] where map[i] > 0 (IndexMapGrad: the gradient of a data-movement
// op, from the forward op's index map; dx is zeroed first).
extern "C" __global__ void scatter_add_f32(const float* dy, const int* map, float* dx, i64 n) {
    GRID_LOOP(i, n) {
        int s = map[i];
        if (s > 0) atomicAdd(&dx[s - 1], dy[i]);
    }
}

// Fills `rows` rows of `y` with the row vector `b` (the bias a GEMM then accumulates onto);
// one kernel per GEMM element type.
#define FILL_ROWS(name, T)                                                                         \
    extern "C" __global__ void name(const T* b, T* y, i64 rows, i64 cols) {                        \
        GRID_LOOP(i, rows * cols) { y[i] = b[i % cols]; }                                          \
    }
FILL_ROWS(fill_rows_f32, float)
FILL_ROWS(fill_rows_bf16, bf16_t)

extern "C" __global__ void fill_f32(float* y, float v, i64 n) {
    GRID_LOOP(i, n) { y[i] = v; }
}

// Copies `n` bytes from `src` to `dst` unless a kernel of the run has set the error flag: how a
// CUDA graph hands a step's new state back to the state's buffers, so that a step that failed
// (a label out of range) leaves the state as it was, as an eager run does.
extern "C" __global__ void copy_unless_flagged(const unsigned char* src, unsigned char* dst, i64 n,
                                               const i64* err) {
    if (*err != 0) return;
    GRID_LOOP(i, n) { dst[i] = src[i]; }
}

// ---------------------------------------------------------------- elementwise chains

// The chain interpreter: any program of `ChainArgs` (prelude.cuh), read from the arguments
// step by step. The backend launches the kernel specialised for the program instead
// (ops/chain/specialise.rs); this one serves `ADAPTC_CUDA_CHAIN=interpret` and is the
// reference the emulator compares the specialised kernels with.
extern "C" __global__ void elementwise_chain(ChainArgs p, i64 n) {
    GRID_LOOP(i, n) {
        float r[CHAIN_IN + CHAIN_STEPS];
        i64 in_off[CHAIN_IN], out_off[CHAIN_OUT];
        for (int k = 0; k < p.n_in; ++k) in_off[k] = 0;
        for (int k = 0; k < p.n_out; ++k) out_off[k] = 0;
        // Dims come merged (launch.rs `merge_dims`): one dim needs no division, and below 2^31
        // elements the divisions are 32-bit.
        if (p.rank == 1) {
            for (int k = 0; k < p.n_in; ++k) in_off[k] = i * p.in_st[k][0];
            for (int k = 0; k < p.n_out; ++k) out_off[k] = i * p.out_st[k][0];
        } else if (n <= 0x7fffffff) {
            unsigned int rem = (unsigned int)i;
            for (int d = p.rank - 1; d >= 0; --d) {
                unsigned int size = (unsigned int)p.shape[d], c = rem % size;
                rem /= size;
                for (int k = 0; k < p.n_in; ++k) in_off[k] += (i64)c * p.in_st[k][d];
                for (int k = 0; k < p.n_out; ++k) out_off[k] += (i64)c * p.out_st[k][d];
            }
        } else {
            i64 rem = i;
            for (int d = p.rank - 1; d >= 0; --d) {
                i64 c = rem % p.shape[d];
                rem /= p.shape[d];
                for (int k = 0; k < p.n_in; ++k) in_off[k] += c * p.in_st[k][d];
                for (int k = 0; k < p.n_out; ++k) out_off[k] += c * p.out_st[k][d];
            }
        }
        for (int k = 0; k < p.n_in; ++k) {
            r[k] = p.in_kind[k] == 0   ? ((const float*)p.in_ptr[k])[in_off[k]]
                   : p.in_kind[k] == 1 ? bf16_to_f32(((const bf16_t*)p.in_ptr[k])[in_off[k]])
                                       : 0.0f;
        }
        for (int s = 0; s < p.n_steps; ++s) {
            float u = r[p.a[s]], v = r[p.b[s] >= 0 ? p.b[s] : p.a[s]], y;
            switch (p.kind[s]) {
                case 0: y = unary_op(p.code[s], u, 0.0f, 0.0f); break;
                case 1: y = binary_op(p.code[s], u, v); break;
                case 2: y = bf16_to_f32(f32_to_bf16(u)); break;
                default: y = u; break;
            }
            r[p.n_in + s] = y;
        }
        for (int k = 0; k < p.n_out; ++k) {
            float y = r[p.out_reg[k]];
            if (p.out_bf16[k]) ((bf16_t*)p.out_ptr[k])[out_off[k]] = f32_to_bf16(y);
            else ((float*)p.out_ptr[k])[out_off[k]] = y;
        }
    }
}

// ---------------------------------------------------------------- reductions

// Reduces over a split iteration space: output point o walks `keep` (operand 0 strides of x,
// operand 1 strides of y), reduced point r walks `red` (operand 0 strides of x). One block
// per output element. kind: 0 sum, 1 max, 2 min, 3 sum of squares; the result is multiplied
// by `scale` (1/count for a mean).
extern "C" __global__ void reduce_f32(int kind, Layout keep, Layout red, const float* x, float* y, i64 nout,
                                      i64 nred, float scale) {
    int bk = kind == 3 ? 0 : kind;
    for (i64 o = blockIdx.x; o < nout; o += gridDim.x) {
        i64 base = offset_of(keep, 0, o);
        float acc = bk == 0 ? 0.0f : bk == 1 ? -INFINITY : INFINITY;
        for (i64 r = threadIdx.x; r < nred; r += blockDim.x) {
            float v = x[base + offset_of(red, 0, r)];
            if (kind == 0) acc += v;
            else if (kind == 1) acc = nanmax(acc, v);
            else if (kind == 2) acc = nanmin(acc, v);
            else acc += v * v;
        }
        acc = block_reduce(acc, bk);
        if (threadIdx.x == 0) y[offset_of(keep, 1, o)] = acc * scale;
    }
}

// Column sums of a row-major [rows, cols] matrix: y[c] = scale · Σ_r x[r, c]. Blocks of
// 32 columns × 8 row lanes, so reads are coalesced along the row.
extern "C" __global__ void colsum_f32(const float* x, float* y, i64 rows, i64 cols, float scale) {
    __shared__ float part[8][33];
    i64 c = (i64)blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (c < cols) {
        for (i64 r = threadIdx.y; r < rows; r += 8) acc += x[r * cols + c];
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float s = 0.0f;
        for (int k = 0; k < 8; ++k) s += part[k][threadIdx.x];
        y[c] = s * scale;
    }
}

// ---------------------------------------------------------------- row statistics

// Mean and inverse standard deviation (two passes) of one row, for every thread of the block.
__device__ void row_mean_invstd(const float* xr, i64 cols, float eps, float* mean, float* invstd) {
    float s = 0.0f;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
    float m = block_reduce(s, 0) / (float)cols;
    float q = 0.0f;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
        float d = xr[c] - m;
        q += d * d;
    }
    *mean = m;
    *invstd = rsqrtf(block_reduce(q, 0) / (float)cols + eps);
}

// Max and Σ exp(x − max) of one row, for every thread of the block.
template <typename T>
__device__ void row_max_sumexp(const T* xr, i64 cols, float* max, float* sum) {
    float m = -INFINITY;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) m = nanmax(m, widen(xr[c]));
    m = block_reduce(m, 1);
    float s = 0.0f;
    for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += expf(widen(xr[c]) - m);
    *max = m;
    *sum = block_reduce(s, 0);
}

// ---------------------------------------------------------------- softmax

// Softmax (log=0) or LogSoftmax (log=1) over rows of length `cols`.
extern "C" __global__ void softmax_f32(const float* x, float* y, i64 rows, i64 cols, int log) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        float m, s;
        row_max_sumexp(xr, cols, &m, &s);
        if (log) {
            float ls = logf(s);
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = xr[c] - m - ls;
        } else {
            // A row of −∞ (fully masked) has m = −∞: its exps are NaN, as on the CPU.
            float inv = 1.0f / s;
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = expf(xr[c] - m) * inv;
        }
    }
}

// dx = y · (dy − Σ dy·y) per row.
extern "C" __global__ void softmax_grad_f32(const float* dy, const float* y, float* dx, i64 rows, i64 cols) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* dyr = dy + r * cols;
        const float* yr = y + r * cols;
        float s = 0.0f;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) s += dyr[c] * yr[c];
        s = block_reduce(s, 0);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) dx[r * cols + c] = yr[c] * (dyr[c] - s);
    }
}

// ---------------------------------------------------------------- fused attention

// SoftmaxAttention's row kernels (runtime/src/cuda/ops/attention.rs). The backend works
// through the query rows in blocks: for rows r0 .. r0+rows of every one of `products` (batch)
// products, a GEMM writes the scores a·b into `s` ([products, rows, cols], packed), these
// kernels turn them into probabilities in place (one CUDA block per row), and GEMMs take it
// from there. Row g of `s` is product g / rows, query row r0 + g % rows; `lse` is
// [products, m], `y` and `dy` are [products, m, dv].
//
// The bias (absent when null) is read at bias_off(p) + r·bias_rs + c·bias_cs, bias_off(p)
// being `bl`'s operand 0 at batch point p: any shape that broadcasts to the scores.
__device__ __forceinline__ const float* attn_bias_row(const float* bias, const Layout& bl, i64 bias_rs, i64 p,
                                                      i64 r) {
    return bias ? bias + offset_of(bl, 0, p) + r * bias_rs : nullptr;
}

// A probability from its score and the row's log-Σ-exp: a fully masked row (lse = −∞) gives
// 0 when `zero_masked` (the exporters' NaN guard), NaN otherwise (plain softmax), as on the CPU.
__device__ __forceinline__ float attn_prob(float x, float lse, int zero_masked) {
    if (lse == -INFINITY) return zero_masked ? 0.0f : __int_as_float(0x7fffffff);
    return expf(x - lse);
}

// Forward: s += bias, lse = log Σ exp(s) per row (−∞ for a fully masked row), s = exp(s − lse).
extern "C" __global__ void attn_probs_f32(float* s, const float* bias, Layout bl, i64 bias_rs, i64 bias_cs,
                                          float* lse, i64 products, i64 rows, i64 m, i64 r0, i64 cols,
                                          int zero_masked) {
    for (i64 g = blockIdx.x; g < products * rows; g += gridDim.x) {
        i64 p = g / rows, r = r0 + g % rows;
        float* sr = s + g * cols;
        const float* br = attn_bias_row(bias, bl, bias_rs, p, r);
        // Each thread adds the bias to the columns it reads next (no other thread reads them).
        if (br)
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x) sr[c] += br[c * bias_cs];
        float mx, sum;
        row_max_sumexp(sr, cols, &mx, &sum);
        float l = mx == -INFINITY ? -INFINITY : mx + logf(sum);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) sr[c] = attn_prob(sr[c], l, zero_masked);
        if (threadIdx.x == 0) lse[p * m + r] = l;
    }
}

// Backward, given the scores a·b in `s` and dP = dy·vᵀ in `dp`: the probabilities rebuilt
// into `s` (P = exp(s + bias − lse)) and dS = P ⊙ (dP − δ) into `dp`, δ = Σ dy ⊙ y over the
// row's `dv` outputs (which equals Σ dP ⊙ P).
extern "C" __global__ void attn_grad_probs_f32(float* s, float* dp, const float* bias, Layout bl, i64 bias_rs,
                                               i64 bias_cs, const float* lse, const float* y, const float* dy,
                                               i64 products, i64 rows, i64 m, i64 r0, i64 cols, i64 dv,
                                               int zero_masked) {
    for (i64 g = blockIdx.x; g < products * rows; g += gridDim.x) {
        i64 p = g / rows, r = r0 + g % rows, o = (p * m + r) * dv;
        float* sr = s + g * cols;
        float* dr = dp + g * cols;
        const float* br = attn_bias_row(bias, bl, bias_rs, p, r);
        float d = 0.0f;
        for (i64 c = threadIdx.x; c < dv; c += blockDim.x) d += dy[o + c] * y[o + c];
        d = block_reduce(d, 0);
        float l = lse[p * m + r];
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            float x = br ? sr[c] + br[c * bias_cs] : sr[c];
            float pr = attn_prob(x, l, zero_masked);
            sr[c] = pr;
            dr[c] = pr * (dr[c] - d);
        }
    }
}

// ---------------------------------------------------------------- flash attention (bf16 tensor cores)

// SoftmaxAttention with `products="bf16"` in three kernels that never store the scores: per
// block of 64 query rows (forward, dA) or 64 keys (dB, dV), the other side streams through
// shared memory in tiles of 64, and every product runs on bf16 tensor cores (PTX
// `mma.m16n8k16`, f32 accumulation) from operands rounded once to bf16 — the CPU kernel's
// `products="bf16"` rule. The forward keeps a running max and sum per row (online softmax), so
// P·v sums probabilities rounded before the final normalisation (within bf16's precision of
// the CPU's P rounded after it); the backward rebuilds P = exp(s + bias − lse) exactly as the
// CPU does. a: [P, M, D], b: [P, D, N] (keys transposed), v, y, dy: [P, *, D] with one head
// size D for the keys and the values (32 or 64: the host checks); lse, δ: [P, M]. Blocks are
// 128 threads (4 warps of 16 rows or keys); the grid strides over (product, tile) pairs,
// product-major, so blocks in flight share a product's keys and a batch entry's bias in L2.
// A warp skips a tile whose every score is masked (bias −∞): half the work of a causal mask.

#define FA_TILE 64
#define FA_THREADS 128

// D(16×8, f32) += A(16×16, bf16, row-major) · B(16×8, bf16, column-major), one warp: PTX's
// mma.m16n8k16 fragments, with g = lane / 4, t = lane % 4 and the lower column (or k) in
// each register's low half:
//   A: a[0] = row g, cols 2t..2t+1; a[1] = row g+8, same cols; a[2], a[3]: cols 2t+8..2t+9
//   B: b[0] = k 2t..2t+1, col g; b[1] = k 2t+8..2t+9, col g
//   C: c[0..1] = row g, cols 2t..2t+1; c[2..3] = row g+8, same cols
// The emulator (runtime/tests/cuda_emulated/shim.h) supplies its own, as a warp exchange.
#ifndef ADAPTC_EMULATED
__device__ __forceinline__ void mma_bf16_16816(float* c, const unsigned* a, const unsigned* b) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();  // the host launches these kernels on sm_80 and newer only
#endif
}
#endif

// Two f32 rounded to bf16 and packed, `lo` in the low half.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
}

// Two adjacent bf16 of a shared tile (the index is even, the tile 4-byte aligned).
__device__ __forceinline__ unsigned ld_pair(const bf16_t* s, int i) {
    return (unsigned)s[i] | ((unsigned)s[i + 1] << 16);
}

// Whether `x` holds on any lane of the warp.
__device__ __forceinline__ bool warp_any(bool x) {
    int v = x ? 1 : 0;
    for (int o = 16; o > 0; o >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, o);
    return v != 0;
}

// Rows r0 .. r0+R × columns c0 .. c0+C of the row-major matrix x ([rows, cols], leading dim
// ld; f32 or bf16) into the shared tile s as bf16, zero outside the matrix: s[r·pitch + c], or
// s[c·pitch + r] when `tr`. Consecutive threads read consecutive columns (coalesced). A bf16
// element arrives as it is (widening then rounding gives its bits back).
template <int R, int C, bool TR, typename T>
__device__ __forceinline__ void fa_stage(bf16_t* s, int pitch, const T* x, i64 ld, i64 rows, i64 cols, i64 r0,
                                         i64 c0) {
    for (int i = threadIdx.x; i < R * C; i += blockDim.x) {
        int r = i / C, c = i % C;
        i64 gr = r0 + r, gc = c0 + c;
        bf16_t h = f32_to_bf16(gr < rows && gc < cols ? widen(x[gr * ld + gc]) : 0.0f);
        if (TR)
            s[c * pitch + r] = h;
        else
            s[r * pitch + c] = h;
    }
}

// A fragments of rows r0 .. r0+16 of the row-major matrix x ([rows, D]; f32 or bf16) straight
// from global memory, rounded to bf16 (zero past the last row); read once per block.
template <int D, typename T>
__device__ __forceinline__ void fa_rows_fragment(unsigned (*f)[4], const T* x, i64 rows, i64 r0) {
    int g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    for (int ks = 0; ks < D / 16; ++ks)
        for (int q = 0; q < 4; ++q) {
            i64 r = r0 + g + (q & 1) * 8;
            int c = ks * 16 + 2 * t + (q >> 1) * 8;
            f[ks][q] = r < rows ? pack_bf16(widen(x[r * D + c]), widen(x[r * D + c + 1])) : 0u;
        }
}

// The A fragments of a 16 × 16·KK tile held as C fragments (16 × 8 tiles): C tiles 2k and
// 2k+1 are A's k-th 16 columns — no data moves between lanes.
__device__ __forceinline__ void fa_c_to_a(unsigned* a, const float* c0, const float* c1) {
    a[0] = pack_bf16(c0[0], c0[1]);
    a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]);
    a[3] = pack_bf16(c1[2], c1[3]);
}

// The bias at (row, col) of product p's scores (0 without one).
__device__ __forceinline__ float fa_bias(const float* bias_p, i64 brs, i64 bcs, i64 row, i64 col) {
    return bias_p ? bias_p[row * brs + col * bcs] : 0.0f;
}

template <int D, typename T>
__device__ void flash_fwd(const T* a, const T* b, const T* v, const float* bias, const Layout& bl,
                          i64 brs, i64 bcs, float* y, float* lse, i64 products, i64 m, i64 n, int zero_masked) {
    constexpr int KS = D / 16, OT = D / 8, NT = FA_TILE / 8, PB = D + 8, PV = FA_TILE + 8;
    __shared__ bf16_t sbt[FA_TILE * PB];  // [key][d]: S's B operand
    __shared__ bf16_t svt[D * PV];        // [d][key]: P·v's B operand
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const i64 tiles = (m + FA_TILE - 1) / FA_TILE;
    for (i64 job = blockIdx.x; job < products * tiles; job += gridDim.x) {
        const i64 p = job / tiles, r0 = (job % tiles) * FA_TILE + warp * 16;
        const T* ap = a + p * m * D;
        const T* bp = b + p * D * n;
        const T* vp = v + p * n * D;
        const float* biasp = bias ? bias + offset_of(bl, 0, p) : nullptr;
        unsigned qa[KS][4];
        fa_rows_fragment<D>(qa, ap, m, r0);
        float o[OT][4], mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
        for (int j = 0; j < OT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
        for (i64 k0 = 0; k0 < n; k0 += FA_TILE) {
            __syncthreads();  // the previous tile's readers are done
            fa_stage<D, FA_TILE, true>(sbt, PB, bp, n, D, n, 0, k0);
            fa_stage<FA_TILE, D, true>(svt, PV, vp, D, n, D, k0, 0);
            __syncthreads();
            float s[NT][4];
            bool live = false;
            for (int j = 0; j < NT; ++j)
                for (int e = 0; e < 4; ++e) {
                    i64 row = r0 + g + (e >> 1) * 8, col = k0 + j * 8 + 2 * t + (e & 1);
                    s[j][e] = row < m && col < n ? fa_bias(biasp, brs, bcs, row, col) : -INFINITY;
                    live |= s[j][e] != -INFINITY;
                }
            if (!warp_any(live)) continue;  // every score masked: adds nothing
            for (int j = 0; j < NT; ++j) {
                float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                for (int ks = 0; ks < KS; ++ks) {
                    int i = (j * 8 + g) * PB + ks * 16 + 2 * t;
                    unsigned bb[2] = {ld_pair(sbt, i), ld_pair(sbt, i + 8)};
                    mma_bf16_16816(acc, qa[ks], bb);
                }
                for (int e = 0; e < 4; ++e) s[j][e] += acc[e];
            }
            for (int h = 0; h < 2; ++h) {
                float rm = -INFINITY;
                for (int j = 0; j < NT; ++j) rm = fmaxf(rm, fmaxf(s[j][2 * h], s[j][2 * h + 1]));
                rm = fmaxf(rm, __shfl_xor_sync(0xffffffffu, rm, 1));
                rm = fmaxf(rm, __shfl_xor_sync(0xffffffffu, rm, 2));
                float mnew = fmaxf(mx[h], rm);
                float base = mnew == -INFINITY ? 0.0f : mnew;  // nothing seen yet: no −∞ − −∞
                float scale = expf(mx[h] - base), sum = 0.0f;
                for (int j = 0; j < NT; ++j)
                    for (int e = 2 * h; e < 2 * h + 2; ++e) {
                        s[j][e] = expf(s[j][e] - base);
                        sum += s[j][e];
                    }
                l[h] = l[h] * scale + sum;  // this lane's columns; the row's lanes add up at the end
                mx[h] = mnew;
                for (int j = 0; j < OT; ++j) {
                    o[j][2 * h] *= scale;
                    o[j][2 * h + 1] *= scale;
                }
            }
            for (int kk = 0; kk < FA_TILE / 16; ++kk) {
                unsigned pa[4];
                fa_c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
                for (int j = 0; j < OT; ++j) {
                    int i = (j * 8 + g) * PV + kk * 16 + 2 * t;
                    unsigned bb[2] = {ld_pair(svt, i), ld_pair(svt, i + 8)};
                    mma_bf16_16816(o[j], pa, bb);
                }
            }
        }
        for (int h = 0; h < 2; ++h) {
            float sum = l[h];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            i64 row = r0 + g + h * 8;
            if (row >= m) continue;
            bool masked = mx[h] == -INFINITY;
            if (t == 0) lse[p * m + row] = masked ? -INFINITY : mx[h] + logf(sum);
            float* yr = y + (p * m + row) * D;
            for (int j = 0; j < OT; ++j)
                for (int e = 0; e < 2; ++e) {
                    float val = o[j][2 * h + e] / sum;
                    if (masked) val = zero_masked ? 0.0f : __int_as_float(0x7fffffff);
                    yr[j * 8 + 2 * t + e] = val;
                }
        }
    }
}

// δ = Σ dy ⊙ y per row ([rows, d]; dy f32 or bf16, y f32): one warp per row.
template <typename T>
__device__ void attn_row_dot(const T* dy, const float* y, float* delta, i64 rows, i64 d) {
    const i64 warps = (i64)gridDim.x * (blockDim.x / 32);
    for (i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
        float s = 0.0f;
        for (i64 c = threadIdx.x % 32; c < d; c += 32) s += widen(dy[r * d + c]) * y[r * d + c];
        s = warp_sum(s);
        if (threadIdx.x % 32 == 0) delta[r] = s;
    }
}
extern "C" __global__ void attn_row_dot_f32(const float* dy, const float* y, float* delta, i64 rows, i64 d) {
    attn_row_dot(dy, y, delta, rows, d);
}
extern "C" __global__ void attn_row_dot_bf16(const bf16_t* dy, const float* y, float* delta, i64 rows, i64 d) {
    attn_row_dot(dy, y, delta, rows, d);
}

// Whether the score at (row, col) takes part in the backward: inside the matrices and either
// unmasked or in a fully masked row whose probabilities are NaN (no zero guard).
__device__ __forceinline__ bool fa_grad_live(float bias, float lse, int zero_masked) {
    return bias != -INFINITY || (lse == -INFINITY && !zero_masked);
}

// da = dS · bᵀ for 64 query rows per block (4 warps of 16), the keys streamed in tiles.
template <int D, typename T>
__device__ void flash_bwd_da(const T* a, const T* b, const T* v, const float* bias, const Layout& bl, i64 brs,
                             i64 bcs, const float* lse, const float* delta, const T* dy, float* da,
                             i64 products, i64 m, i64 n, int zero_masked) {
    constexpr int KS = D / 16, OT = D / 8, NT = FA_TILE / 8, PB = D + 8, PK = FA_TILE + 8;
    __shared__ bf16_t sbt[FA_TILE * PB];  // [key][d] = b[d][key]: S's B operand
    __shared__ bf16_t sv[FA_TILE * PB];   // [key][d] = v[key][d]: dP = dy·vᵀ's B operand
    __shared__ bf16_t sb[D * PK];         // [d][key] = b[d][key]: dS·bᵀ's B operand
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const i64 tiles = (m + FA_TILE - 1) / FA_TILE;
    for (i64 job = blockIdx.x; job < products * tiles; job += gridDim.x) {
        const i64 p = job / tiles, r0 = (job % tiles) * FA_TILE + warp * 16;
        const T* bp = b + p * D * n;
        const T* vp = v + p * n * D;
        const float* biasp = bias ? bias + offset_of(bl, 0, p) : nullptr;
        unsigned qa[KS][4], ga[KS][4];
        fa_rows_fragment<D>(qa, a + p * m * D, m, r0);
        fa_rows_fragment<D>(ga, dy + p * m * D, m, r0);
        float rl[2], rd[2];
        for (int h = 0; h < 2; ++h) {
            i64 row = r0 + g + h * 8;
            rl[h] = row < m ? lse[p * m + row] : 0.0f;
            rd[h] = row < m ? delta[p * m + row] : 0.0f;
        }
        float acc[OT][4];
        for (int j = 0; j < OT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
        for (i64 k0 = 0; k0 < n; k0 += FA_TILE) {
            __syncthreads();
            fa_stage<D, FA_TILE, true>(sbt, PB, bp, n, D, n, 0, k0);
            fa_stage<FA_TILE, D, false>(sv, PB, vp, D, n, D, k0, 0);
            fa_stage<D, FA_TILE, false>(sb, PK, bp, n, D, n, 0, k0);
            __syncthreads();
            float s[NT][4], dp[NT][4];
            unsigned dead = 0;  // bit 4j + e: score (j, e) takes no part
            for (int j = 0; j < NT; ++j)
                for (int e = 0; e < 4; ++e) {
                    i64 row = r0 + g + (e >> 1) * 8, col = k0 + j * 8 + 2 * t + (e & 1);
                    bool in = row < m && col < n;
                    s[j][e] = in ? fa_bias(biasp, brs, bcs, row, col) : -INFINITY;
                    if (!(in && fa_grad_live(s[j][e], rl[e >> 1], zero_masked))) dead |= 1u << (4 * j + e);
                }
            if (!warp_any(dead != 0xffffffffu)) continue;
            for (int j = 0; j < NT; ++j) {
                float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, pc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                for (int ks = 0; ks < KS; ++ks) {
                    int i = (j * 8 + g) * PB + ks * 16 + 2 * t;
                    unsigned bs[2] = {ld_pair(sbt, i), ld_pair(sbt, i + 8)};
                    unsigned bv[2] = {ld_pair(sv, i), ld_pair(sv, i + 8)};
                    mma_bf16_16816(sc, qa[ks], bs);
                    mma_bf16_16816(pc, ga[ks], bv);
                }
                for (int e = 0; e < 4; ++e) {
                    bool off = (dead >> (4 * j + e)) & 1u;
                    float pr = attn_prob(sc[e] + s[j][e], rl[e >> 1], zero_masked);
                    dp[j][e] = off ? 0.0f : pr * (pc[e] - rd[e >> 1]);
                }
            }
            for (int kk = 0; kk < FA_TILE / 16; ++kk) {
                unsigned sa[4];
                fa_c_to_a(sa, dp[2 * kk], dp[2 * kk + 1]);
                for (int j = 0; j < OT; ++j) {
                    int i = (j * 8 + g) * PK + kk * 16 + 2 * t;
                    unsigned bb[2] = {ld_pair(sb, i), ld_pair(sb, i + 8)};
                    mma_bf16_16816(acc[j], sa, bb);
                }
            }
        }
        for (int h = 0; h < 2; ++h) {
            i64 row = r0 + g + h * 8;
            if (row >= m) continue;
            float* dr = da + (p * m + row) * D;
            for (int j = 0; j < OT; ++j) {
                dr[j * 8 + 2 * t] = acc[j][2 * h];
                dr[j * 8 + 2 * t + 1] = acc[j][2 * h + 1];
            }
        }
    }
}

// db = aᵀ · dS and dv = Pᵀ · dy for 64 keys per block (4 warps of 16 keys), the query rows
// streamed in tiles: each warp works on the transposed scores Sᵀ = bᵀ·aᵀ (its keys as rows),
// so Pᵀ and dSᵀ are A operands where they stand.
template <int D, typename T>
__device__ void flash_bwd_dbv(const T* a, const T* b, const T* v, const float* bias, const Layout& bl, i64 brs,
                              i64 bcs, const float* lse, const float* delta, const T* dy, float* db,
                              float* dv, i64 products, i64 m, i64 n, int zero_masked) {
    constexpr int KS = D / 16, OT = D / 8, NT = FA_TILE / 8, PA = D + 8, PT = FA_TILE + 8;
    __shared__ bf16_t sa[FA_TILE * PA];   // [row][d] = a: Sᵀ's B operand
    __shared__ bf16_t sdy[FA_TILE * PA];  // [row][d] = dy: dPᵀ = v·dyᵀ's B operand
    __shared__ bf16_t sat[D * PT];        // [d][row] = a: dSᵀ·a's B operand
    __shared__ bf16_t sdyt[D * PT];       // [d][row] = dy: Pᵀ·dy's B operand
    __shared__ float sl[FA_TILE], sd[FA_TILE];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const i64 tiles = (n + FA_TILE - 1) / FA_TILE;
    for (i64 job = blockIdx.x; job < products * tiles; job += gridDim.x) {
        const i64 p = job / tiles, c0 = (job % tiles) * FA_TILE + warp * 16;
        const T* ap = a + p * m * D;
        const T* bp = b + p * D * n;
        const T* dyp = dy + p * m * D;
        const float* biasp = bias ? bias + offset_of(bl, 0, p) : nullptr;
        // bᵀ's rows (this warp's keys) as A fragments: element (key, d) = b[d][key].
        unsigned ka[KS][4], va[KS][4];
        for (int ks = 0; ks < KS; ++ks)
            for (int q = 0; q < 4; ++q) {
                i64 key = c0 + g + (q & 1) * 8;
                int d = ks * 16 + 2 * t + (q >> 1) * 8;
                ka[ks][q] = key < n ? pack_bf16(widen(bp[d * n + key]), widen(bp[(d + 1) * n + key])) : 0u;
            }
        fa_rows_fragment<D>(va, v + p * n * D, n, c0);
        float gv[OT][4], gb[OT][4];
        for (int j = 0; j < OT; ++j)
            for (int e = 0; e < 4; ++e) gv[j][e] = gb[j][e] = 0.0f;
        for (i64 q0 = 0; q0 < m; q0 += FA_TILE) {
            __syncthreads();
            fa_stage<FA_TILE, D, false>(sa, PA, ap, D, m, D, q0, 0);
            fa_stage<FA_TILE, D, false>(sdy, PA, dyp, D, m, D, q0, 0);
            fa_stage<FA_TILE, D, true>(sat, PT, ap, D, m, D, q0, 0);
            fa_stage<FA_TILE, D, true>(sdyt, PT, dyp, D, m, D, q0, 0);
            for (int i = threadIdx.x; i < FA_TILE; i += blockDim.x) {
                sl[i] = q0 + i < m ? lse[p * m + q0 + i] : 0.0f;
                sd[i] = q0 + i < m ? delta[p * m + q0 + i] : 0.0f;
            }
            __syncthreads();
            // Transposed tile: element e of C tile j is key c0 + g (+8), query q0 + 8j + 2t (+1).
            float s[NT][4], ds[NT][4];
            unsigned dead = 0;  // bit 4j + e: score (j, e) takes no part
            for (int j = 0; j < NT; ++j)
                for (int e = 0; e < 4; ++e) {
                    i64 key = c0 + g + (e >> 1) * 8;
                    int qi = j * 8 + 2 * t + (e & 1);
                    i64 row = q0 + qi;
                    bool in = row < m && key < n;
                    s[j][e] = in ? fa_bias(biasp, brs, bcs, row, key) : -INFINITY;
                    if (!(in && fa_grad_live(s[j][e], sl[qi], zero_masked))) dead |= 1u << (4 * j + e);
                }
            if (!warp_any(dead != 0xffffffffu)) continue;
            for (int j = 0; j < NT; ++j) {
                float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, pc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                for (int ks = 0; ks < KS; ++ks) {
                    int i = (j * 8 + g) * PA + ks * 16 + 2 * t;
                    unsigned bs[2] = {ld_pair(sa, i), ld_pair(sa, i + 8)};
                    unsigned bd[2] = {ld_pair(sdy, i), ld_pair(sdy, i + 8)};
                    mma_bf16_16816(sc, ka[ks], bs);
                    mma_bf16_16816(pc, va[ks], bd);
                }
                for (int e = 0; e < 4; ++e) {
                    int qi = j * 8 + 2 * t + (e & 1);
                    bool off = (dead >> (4 * j + e)) & 1u;
                    float pr = off ? 0.0f : attn_prob(sc[e] + s[j][e], sl[qi], zero_masked);
                    s[j][e] = pr;
                    ds[j][e] = off ? 0.0f : pr * (pc[e] - sd[qi]);
                }
            }
            for (int kk = 0; kk < FA_TILE / 16; ++kk) {
                unsigned pa[4], da4[4];
                fa_c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
                fa_c_to_a(da4, ds[2 * kk], ds[2 * kk + 1]);
                for (int j = 0; j < OT; ++j) {
                    int i = (j * 8 + g) * PT + kk * 16 + 2 * t;
                    unsigned by[2] = {ld_pair(sdyt, i), ld_pair(sdyt, i + 8)};
                    unsigned ba[2] = {ld_pair(sat, i), ld_pair(sat, i + 8)};
                    mma_bf16_16816(gv[j], pa, by);
                    mma_bf16_16816(gb[j], da4, ba);
                }
            }
        }
        // dv[key][d] and db[d][key] (db is the gradient of the transposed keys).
        for (int h = 0; h < 2; ++h) {
            i64 key = c0 + g + h * 8;
            if (key >= n) continue;
            float* vr = dv + (p * n + key) * D;
            float* bc = db + p * D * n + key;
            for (int j = 0; j < OT; ++j)
                for (int e = 0; e < 2; ++e) {
                    int d = j * 8 + 2 * t + e;
                    vr[d] = gv[j][2 * h + e];
                    bc[(i64)d * n] = gb[j][2 * h + e];
                }
        }
    }
}

// The entry points, one per kernel, head size D and operand type T (`flash.rs` names them):
// f32 operands, or bf16 ones as stored (`_bf16`); the outputs and statistics are f32.
#define FLASH_FWD(NAME, D, T)                                                                                  \
    extern "C" __global__ void NAME(const T* a, const T* b, const T* v, const float* bias, Layout bl, i64 brs,  \
                                    i64 bcs, float* y, float* lse, i64 products, i64 m, i64 n, int zero_masked) { \
        flash_fwd<D, T>(a, b, v, bias, bl, brs, bcs, y, lse, products, m, n, zero_masked);                      \
    }
#define FLASH_BWD_DA(NAME, D, T)                                                                               \
    extern "C" __global__ void NAME(const T* a, const T* b, const T* v, const float* bias, Layout bl, i64 brs,  \
                                    i64 bcs, const float* lse, const float* delta, const T* dy, float* da,      \
                                    i64 products, i64 m, i64 n, int zero_masked) {                              \
        flash_bwd_da<D, T>(a, b, v, bias, bl, brs, bcs, lse, delta, dy, da, products, m, n, zero_masked);       \
    }
#define FLASH_BWD_DBV(NAME, D, T)                                                                              \
    extern "C" __global__ void NAME(const T* a, const T* b, const T* v, const float* bias, Layout bl, i64 brs,  \
                                    i64 bcs, const float* lse, const float* delta, const T* dy, float* db,      \
                                    float* dv, i64 products, i64 m, i64 n, int zero_masked) {                   \
        flash_bwd_dbv<D, T>(a, b, v, bias, bl, brs, bcs, lse, delta, dy, db, dv, products, m, n, zero_masked);  \
    }
FLASH_FWD(flash_attn_fwd_d32, 32, float)
FLASH_BWD_DA(flash_attn_bwd_da_d32, 32, float)
FLASH_BWD_DBV(flash_attn_bwd_dbv_d32, 32, float)
FLASH_FWD(flash_attn_fwd_d64, 64, float)
FLASH_BWD_DA(flash_attn_bwd_da_d64, 64, float)
FLASH_BWD_DBV(flash_attn_bwd_dbv_d64, 64, float)
FLASH_FWD(flash_attn_fwd_d32_bf16, 32, bf16_t)
FLASH_BWD_DA(flash_attn_bwd_da_d32_bf16, 32, bf16_t)
FLASH_BWD_DBV(flash_attn_bwd_dbv_d32_bf16, 32, bf16_t)
FLASH_FWD(flash_attn_fwd_d64_bf16, 64, bf16_t)
FLASH_BWD_DA(flash_attn_bwd_da_d64_bf16, 64, bf16_t)
FLASH_BWD_DBV(flash_attn_bwd_dbv_d64_bf16, 64, bf16_t)

// ---------------------------------------------------------------- layer norm

// LayerNormalization over rows of length `cols` with per-column scale and (optional) bias;
// mean and inverse std per row are written when their pointers are non-null.
extern "C" __global__ void layer_norm_f32(const float* x, const float* scale, const float* bias, float* y,
                                          float* mean_out, float* invstd_out, i64 rows, i64 cols, float eps) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * cols;
        float mean, invstd;
        row_mean_invstd(xr, cols, eps, &mean, &invstd);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            float v = (xr[c] - mean) * invstd * scale[c];
            y[r * cols + c] = bias ? v + bias[c] : v;
        }
        if (threadIdx.x == 0) {
            if (mean_out) mean_out[r] = mean;
            if (invstd_out) invstd_out[r] = invstd;
        }
    }
}

// dx of LayerNormalization per row (mean and inverse std recomputed), and the row statistics
// for the column sums of dscale = Σ dy·x̂ that follow:
// dx = invstd · (g − mean(g) − x̂ · mean(g·x̂)), g = dy · scale.
extern "C" __global__ void layer_norm_grad_f32(const float* dy, const float* x, const float* scale, float* dx,
                                               float* mean_out, float* invstd_out, i64 rows, i64 cols, float eps) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * cols;
        const float* dyr = dy + r * cols;
        float mean, invstd;
        row_mean_invstd(xr, cols, eps, &mean, &invstd);
        float sg = 0.0f, sgx = 0.0f;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            float g = dyr[c] * scale[c];
            sg += g;
            sgx += g * (xr[c] - mean) * invstd;
        }
        float mg = block_reduce(sg, 0) / (float)cols;
        float mgx = block_reduce(sgx, 0) / (float)cols;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            float xh = (xr[c] - mean) * invstd;
            dx[r * cols + c] = invstd * (dyr[c] * scale[c] - mg - xh * mgx);
        }
        if (threadIdx.x == 0) {
            mean_out[r] = mean;
            invstd_out[r] = invstd;
        }
    }
}

// dscale[c] = Σ_r dy[r,c] · (x[r,c] − mean[r]) · invstd[r] and dbias[c] = Σ_r dy[r,c]; blocks
// as in colsum_f32.
extern "C" __global__ void layer_norm_params_grad_f32(const float* dy, const float* x, const float* mean,
                                                      const float* invstd, float* dscale, float* dbias, i64 rows,
                                                      i64 cols) {
    __shared__ float ps[8][33];
    __shared__ float pb[8][33];
    i64 c = (i64)blockIdx.x * 32 + threadIdx.x;
    float as = 0.0f, ab = 0.0f;
    if (c < cols) {
        for (i64 r = threadIdx.y; r < rows; r += 8) {
            float d = dy[r * cols + c];
            as += d * (x[r * cols + c] - mean[r]) * invstd[r];
            ab += d;
        }
    }
    ps[threadIdx.y][threadIdx.x] = as;
    pb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float s = 0.0f, b = 0.0f;
        for (int k = 0; k < 8; ++k) {
            s += ps[k][threadIdx.x];
            b += pb[k][threadIdx.x];
        }
        if (dscale) dscale[c] = s;
        if (dbias) dbias[c] = b;
    }
}

// ---------------------------------------------------------------- activations' gradients

// dx = dy · Gelu'(x); approx 0: exact (erf), 1: tanh form.
extern "C" __global__ void gelu_grad_f32(const float* dy, const float* x, float* dx, i64 n, int approx) {
    GRID_LOOP(i, n) {
        float v = x[i], d;
        if (approx) {
            const float k = 0.7978845608028654f, c = 0.044715f;
            float u = k * (v + c * v * v * v);
            float t = tanhf(u);
            d = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * k * (1.0f + 3.0f * c * v * v);
        } else {
            float cdf = 0.5f * erfcf(-v * 0.70710678118654752f);
            float pdf = 0.3989422804014327f * expf(-0.5f * v * v);
            d = cdf + v * pdf;
        }
        dx[i] = dy[i] * d;
    }
}

// ---------------------------------------------------------------- softmax cross-entropy

// Per row of scores [rows, cols] (class axis last): loss_r = w·(logsumexp − x[label]) and its
// weight w (0 for ignore_index, else 1 or weights[label]). A label outside [0, cols) that is not
// ignored sets `err` to 2. Scores are f32 or bf16 (a model's logits as stored), read as f32.
template <typename T>
__device__ void xent_rows(const T* x, const i64* labels, const float* weights, float* loss, float* wout, i64 rows,
                          i64 cols, i64 ignore, int has_ignore, i64* err) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * cols;
        i64 lab = labels[r];
        bool skip = has_ignore && lab == ignore;
        if (!skip && (lab < 0 || lab >= cols)) {
            if (threadIdx.x == 0) atomicCAS((unsigned long long*)err, 0ull, 2ull);
            skip = true;
        }
        float m, s;
        row_max_sumexp(xr, cols, &m, &s);
        if (threadIdx.x == 0) {
            float w = skip ? 0.0f : (weights ? weights[lab] : 1.0f);
            loss[r] = skip ? 0.0f : w * (m + logf(s) - widen(xr[lab]));
            wout[r] = w;
        }
    }
}

#define XENT_ROWS(name, T)                                                                                     \
    extern "C" __global__ void name(const T* x, const i64* labels, const float* weights, float* loss, float* wout, \
                                    i64 rows, i64 cols, i64 ignore, int has_ignore, i64* err) {                \
        xent_rows<T>(x, labels, weights, loss, wout, rows, cols, ignore, has_ignore, err);                     \
    }
XENT_ROWS(xent_rows_f32, float)
XENT_ROWS(xent_rows_bf16, bf16_t)

// loss = Σ loss_r (sum), Σ loss_r / Σ w_r (mean; 0 when the weights sum to 0), in one block.
extern "C" __global__ void xent_finish_f32(const float* loss, const float* w, float* out, i64 rows, int mean) {
    float s = 0.0f, sw = 0.0f;
    for (i64 r = threadIdx.x; r < rows; r += blockDim.x) {
        s += loss[r];
        sw += w[r];
    }
    s = block_reduce(s, 0);
    sw = block_reduce(sw, 0);
    if (threadIdx.x == 0) out[0] = mean ? (sw == 0.0f ? 0.0f : s / sw) : s;
}

// dscores = (softmax(x) − onehot(label)) · w_r · dloss / denom, where denom = Σ w (mean) or 1.
// `dloss` is the loss gradient: a scalar (sum / mean) or one per row (none, `per_row`). Scores
// (TX) and their gradient (TD) are f32 or bf16; the math is f32, the gradient rounded once.
template <typename TX, typename TD>
__device__ void xent_grad(const float* dloss, const TX* x, const i64* labels, const float* w, const float* wsum,
                          TD* dx, i64 rows, i64 cols, int per_row) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const TX* xr = x + r * cols;
        TD* dr = dx + r * cols;
        float wr = w[r];
        float denom = wsum ? wsum[0] : 1.0f;
        float g = (wr == 0.0f || denom == 0.0f) ? 0.0f : wr * (per_row ? dloss[r] : dloss[0]) / denom;
        if (g == 0.0f) {
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x) dr[c] = narrow<TD>(0.0f);
            continue;
        }
        float m, s;
        row_max_sumexp(xr, cols, &m, &s);
        float inv = 1.0f / s;
        i64 lab = labels[r];
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            float p = expf(widen(xr[c]) - m) * inv;
            dr[c] = narrow<TD>(g * (p - (c == lab ? 1.0f : 0.0f)));
        }
    }
}

#define XENT_GRAD(name, TX, TD)                                                                                    \
    extern "C" __global__ void name(const float* dloss, const TX* x, const i64* labels, const float* w,            \
                                    const float* wsum, TD* dx, i64 rows, i64 cols, int per_row) {                 \
        xent_grad<TX, TD>(dloss, x, labels, w, wsum, dx, rows, cols, per_row);                                     \
    }
XENT_GRAD(xent_grad_f32, float, float)
XENT_GRAD(xent_grad_f32_bf16, float, bf16_t)
XENT_GRAD(xent_grad_bf16_f32, bf16_t, float)
XENT_GRAD(xent_grad_bf16, bf16_t, bf16_t)

// ---------------------------------------------------------------- optimizer

// The optimizer inside the graph (runtime/src/ops/optim.rs is the reference): the global
// gradient norm of `ClipGradNorm` and the `AdamW` step. Every scalar a step needs is read from
// device memory, so a step launches with no host values (and could be captured as a graph).

// Σ x² of `x` added to `*acc`, in double (the CPU kernel's f64 sum): each thread sums its
// grid-stride share, each block its threads, and thread 0 adds the block's sum atomically (the
// caller zeroes `*acc` once and launches this once per tensor). A float's square is exact in
// double (48 significant bits), so a contracted fma(d, d, s) rounds as s + d·d does; blocks add
// in any order, which moves the double's last bits only, far below the f32 the norm becomes.
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

extern "C" __global__ void sumsq_f64(const float* x, i64 n, double* acc) {
    __shared__ double part[32];
    double s = 0.0;
    GRID_LOOP(i, n) {
        double d = (double)x[i];
        s += d * d;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    s = warp_sum_d(s);
    if (lane == 0) part[warp] = s;
    __syncthreads();
    if (warp == 0) {
        double w = lane < nwarps ? part[lane] : 0.0;
        w = warp_sum_d(w);
        if (lane == 0) atomicAdd(acc, w);
    }
}

// One thread: norm = √acc rounded to f32 once; scale = max_norm / (norm + 1e-6) when the norm is
// finite, `has_max` is set and that is below 1, else 1 (`clip_scale`). NaN and ∞ norms give 1.
extern "C" __global__ void clip_finish(const double* acc, float* norm, float* scale, float max_norm, int has_max) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    float nrm = (float)sqrt(acc[0]);
    float s = 1.0f;
    if (has_max && fabsf(nrm) < INFINITY) {
        float c = max_norm / (nrm + 1e-6f);
        if (c < 1.0f) s = c;
    }
    norm[0] = nrm;
    scale[0] = s;
}

// One AdamW step on g·scale into new buffers (outputs never alias inputs), with
// k = [decay, 1−β1, β2, 1−β2, step_size, √bc2, ε]:
//   p ← p·decay;  m ← m + (1−β1)(g − m);  v ← β2·v + (1−β2)·g²;  p ← p − step_size·m / (√v / √bc2 + ε)
// in the CPU kernel's order. Every product is __fmul_rn, which the compiler never fuses with
// an add (NVRTC runs with --fmad=true), and the division and sqrtf are IEEE (no fast math), so
// each element is the CPU's bit for bit.
extern "C" __global__ void adamw_f32(const float* p, const float* g, const float* m, const float* v,
                                     const float* scale, const float* k, float* p_out, float* m_out, float* v_out,
                                     i64 n) {
    const float sc = scale[0], decay = k[0], one_minus_b1 = k[1], b2 = k[2], one_minus_b2 = k[3],
                step_size = k[4], bc2_sqrt = k[5], eps = k[6];
    GRID_LOOP(i, n) {
        float gs = __fmul_rn(g[i], sc);
        float pi = __fmul_rn(p[i], decay);
        float mi = m[i];
        mi = mi + __fmul_rn(one_minus_b1, gs - mi);
        float vi = __fmul_rn(v[i], b2) + __fmul_rn(one_minus_b2, __fmul_rn(gs, gs));
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        pi = pi + __fmul_rn(-step_size, mi / denom);
        p_out[i] = pi;
        m_out[i] = mi;
        v_out[i] = vi;
    }
}
