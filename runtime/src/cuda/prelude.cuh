// The part of adaptc's CUDA kernels that every compiled program shares: conventions, types,
// bf16 conversions, the elementwise op tables and the elementwise-chain arguments. NVRTC
// compiles it in front of kernels.cu (compile.rs `KERNEL_SOURCE`) and in front of each
// chain program's specialised kernel (ops/chain/specialise.rs).
//
// Conventions (mirrored by runtime/src/cuda/launch.rs):
// - element counts and offsets are `long long`; every kernel runs a grid-stride loop, so any
//   grid size is correct and the launcher only picks one that fills the device;
// - a `Layout` describes up to four operands walked over one iteration shape: `st[k][d]` is
//   operand k's stride (in elements) along dim d, 0 where it broadcasts;
// - row kernels (softmax, layer norm, losses) run one block per row with BLOCK threads;
// - float math is fp32 with fp32 accumulation; bf16 tensors are stored as their 16 bits
//   (`bf16_t`), widened to f32 exactly on load and rounded once (nearest even) on store.

#define MAXR 8
#define BLOCK 256
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

typedef long long i64;
typedef unsigned char u8;
typedef unsigned long long u64;
// A bf16 value's bits. Converted by hand (below), not through cuda_bf16.h, so NVRTC needs no
// headers and the host emulator (g++) compiles this file as is.
typedef unsigned short bf16_t;

struct Layout {
    int rank;
    int pad_;
    i64 shape[MAXR];
    i64 st[4][MAXR];
};

// Offset of iteration point `i` in operand `k`.
__device__ __forceinline__ i64 offset_of(const Layout& L, int k, i64 i) {
    i64 off = 0;
    for (int d = L.rank - 1; d >= 0; --d) {
        i64 n = L.shape[d];
        i64 c = i % n;
        i /= n;
        off += c * L.st[k][d];
    }
    return off;
}

// ---------------------------------------------------------------- bf16 conversions

// bf16 is the upper half of an f32: widening is a shift, exact for every value (NaN payloads
// included).
__device__ __forceinline__ float bf16_to_f32(bf16_t h) { return __uint_as_float((unsigned int)h << 16); }

// f32 → bf16, rounded to nearest, ties to even, on the bits: adding 0x7fff plus the kept
// part's lowest bit carries into the kept half exactly when the dropped half is above the
// tie, or at the tie with an odd kept half. The largest finite values round up to ±inf, as
// IEEE rounding does; subnormals round like normals (no flush to zero). NaN stays NaN: the
// sign and upper payload kept with the quiet bit set (rounding could carry a NaN into inf),
// the bits the `half` crate gives.
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned int x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((x >> 16) | 0x0040u);
    return (bf16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// The load and store conversions that let one kernel body serve f32 and bf16 storage.
__device__ __forceinline__ float f32_to_f32(float v) { return v; }

// Overloads for kernels templated over the storage type: `widen` loads as f32, `narrow`
// rounds an f32 result to the storage type.
__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(bf16_t v) { return bf16_to_f32(v); }
template <typename T> __device__ __forceinline__ T narrow(float v);
template <> __device__ __forceinline__ float narrow<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16_t narrow<bf16_t>(float v) { return f32_to_bf16(v); }

#define GRID_LOOP(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// max/min that propagate NaN, as the CPU kernels do (fmaxf/fminf drop it).
__device__ __forceinline__ float nanmax(float a, float b) { return (a != a || b != b) ? __int_as_float(0x7fffffff) : fmaxf(a, b); }
__device__ __forceinline__ float nanmin(float a, float b) { return (a != a || b != b) ? __int_as_float(0x7fffffff) : fminf(a, b); }

// ---------------------------------------------------------------- elementwise

// The exact normal CDF and density, as ONNX Gelu (approximate="none") uses them.
// erfc form: 1 + erf(z) cancels for very negative z, erfc(−z) keeps its relative precision.
__device__ __forceinline__ float gelu_exact(float x) { return 0.5f * x * erfcf(-x * 0.70710678118654752f); }
__device__ __forceinline__ float gelu_tanh(float x) {
    float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

// Unary ops; codes in runtime/src/cuda/ops/elementwise.rs (`unary_code`).
__device__ __forceinline__ float unary_op(int op, float v, float a, float b) {
    float r;
    switch (op) {
        case 0: r = -v; break;
        case 1: r = expf(v); break;
        case 2: r = logf(v); break;
        case 3: r = sqrtf(v); break;
        case 4: r = 1.0f / v; break;
        case 5: r = 1.0f / (1.0f + expf(-v)); break;
        case 6: r = tanhf(v); break;
        case 7: r = erff(v); break;
        case 8: r = gelu_exact(v); break;
        case 9: r = gelu_tanh(v); break;
        case 10: r = fmaxf(v, 0.0f); break;
        case 11: r = fabsf(v); break;
        case 12: r = cosf(v); break;
        case 13: r = sinf(v); break;
        case 14: r = floorf(v); break;
        case 15: r = ceilf(v); break;
        case 16: r = v > 20.0f ? v : log1pf(expf(v)); break;  // Softplus
        case 17: r = v / (1.0f + expf(-v)); break;             // SiLU (x·sigmoid x)
        case 18: r = v * a; break;                             // scale
        case 19: r = isnan(v) ? a : v; break;                  // NaN → a
        case 20: r = v; if (r < a) r = a; if (r > b) r = b; break;  // Clip (keeps NaN)
        case 21: r = v > 0.0f ? v : a * v; break;              // LeakyRelu
        case 22: r = rsqrtf(v); break;
        case 23: r = v; break;
        default: r = v; break;
    }
    return r;
}

// Binary arithmetic in f32; codes in runtime/src/cuda/ops/elementwise.rs (`binary`).
__device__ __forceinline__ float binary_op(int op, float u, float v) {
    switch (op) {
        case 0: return u + v;
        case 1: return u - v;
        case 2: return u * v;
        case 3: return u / v;
        case 4: return nanmax(u, v);
        case 5: return nanmin(u, v);
        case 6: return powf(u, v);
        default: return u;
    }
}

// ---------------------------------------------------------------- elementwise chains

// A program of elementwise steps over registers (runtime/src/ops/chain/program.rs), run per
// element of the chain's shape so the values between steps never leave the thread. Registers
// 0..n_in are the inputs (loaded through broadcast strides; `in_kind` 0 f32, 1 bf16 widened,
// 2 not loaded: a SumToShape's dims), n_in + s is step s's result. Step kinds: 0
// `unary_op(code)`, 1 `binary_op(code)`, 2 round to bf16, 3 copy. Outputs are stored through
// their own strides: an output smaller than the chain (0 along its broadcast dims) is written
// with the same value by several threads. Two kernels take these arguments: the interpreter
// `elementwise_chain` (kernels.cu), which reads the program from them, and the kernel
// generated for one program (ops/chain/specialise.rs), which only reads the launch's shape,
// strides and addresses. The struct travels as a kernel parameter (constant memory).
// Four lanes of f32 or bf16, for vector loads and stores (ops/chain/specialise.rs `Vector4`).
struct alignas(16) f32x4 {
    float x, y, z, w;
};
struct alignas(8) bf16x4 {
    bf16_t x, y, z, w;
};
#define CHAIN_IN 8
#define CHAIN_OUT 6
#define CHAIN_STEPS 32
struct ChainArgs {
    int rank, n_in, n_steps, n_out;
    i64 shape[MAXR];
    i64 in_st[CHAIN_IN][MAXR];
    i64 out_st[CHAIN_OUT][MAXR];
    u64 in_ptr[CHAIN_IN];
    u64 out_ptr[CHAIN_OUT];
    int in_kind[CHAIN_IN];
    int out_bf16[CHAIN_OUT];
    int out_reg[CHAIN_OUT];
    int kind[CHAIN_STEPS];
    int code[CHAIN_STEPS];
    int a[CHAIN_STEPS];
    int b[CHAIN_STEPS];
};
