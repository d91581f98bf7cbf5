// Runs the real kernels of runtime/src/cuda/kernels.cu on the CPU (through shim.h) with small
// random inputs and checks them against straightforward double-precision references written
// here. Built and run by scripts/emulate-kernels.sh; prints `ok <name>` / `FAIL <name>: …` per
// check and a summary line, and exits 1 when a check fails.
//
// Launch shapes are the Rust launcher's (runtime/src/cuda/launch.rs): 1-D kernels BLOCK = 256
// threads with a small grid (so the grid-stride loop takes several turns), row kernels one
// block of 256 per row (and fewer blocks than rows), column kernels blockDim (32, 8) with
// ceil(cols / 32) blocks, xent_finish one block of 1024 (or 256), sumsq_f64 ceil(n / 256)
// blocks of 256 up to 1024, clip_finish one thread.
//
// bf16 kernels are checked bit for bit against a reference that rounds by searching the bf16
// values (bf16_round), not by the kernels' bit arithmetic.

#include "shim.h"

#include "../../src/cuda/prelude.cuh"
#include "../../src/cuda/kernels.cu"

#include <algorithm>
#include <csignal>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <unistd.h>

namespace {

using std::string;
using std::vector;

const double NaN = std::numeric_limits<double>::quiet_NaN();
const double Inf = std::numeric_limits<double>::infinity();
const float NaNf = std::numeric_limits<float>::quiet_NaN();
const float Inff = std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------- reporting

int g_passed = 0, g_failed = 0;
char g_current[256] = "start";

void set_current(const string& name) {
    std::snprintf(g_current, sizeof g_current, "%s", name.c_str());
}

void on_alarm(int) {
    const char pre[] = "FAIL timeout (a barrier deadlock?) in ";
    ssize_t r = write(2, pre, sizeof pre - 1);
    r = write(2, g_current, std::strlen(g_current));
    r = write(2, "\n", 1);
    (void)r;
    _exit(1);
}

void report(bool ok, const string& name, const string& detail = "") {
    if (ok) {
        ++g_passed;
        std::printf("ok %s\n", name.c_str());
    } else {
        ++g_failed;
        std::printf("FAIL %s: %s\n", name.c_str(), detail.c_str());
    }
    std::fflush(stdout);
}

bool near(double got, double want, double rtol, double atol) {
    if (std::isnan(want)) return std::isnan(got);
    if (std::isnan(got)) return false;
    if (std::isinf(want) || std::isinf(got)) return got == want;
    return std::fabs(got - want) <= rtol * std::fabs(want) + atol;
}

// Compares `got` with `want` element by element: |got − want| ≤ rtol·|want| + atol, NaN
// matching NaN and infinities matching exactly.
template <class G>
void check_close(const string& name, const vector<G>& got, const vector<double>& want, double rtol, double atol) {
    if (got.size() != want.size()) {
        report(false, name, "length " + std::to_string(got.size()) + " vs " + std::to_string(want.size()));
        return;
    }
    size_t bad = 0, first = 0;
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!near((double)got[i], want[i], rtol, atol)) {
            if (bad++ == 0) first = i;
        } else if (std::isfinite(want[i])) {
            worst = std::max(worst, std::fabs((double)got[i] - want[i]));
        }
    }
    if (bad == 0) {
        report(true, name);
        return;
    }
    std::ostringstream os;
    os.precision(9);
    os << bad << " of " << got.size() << " elements differ; first at [" << first << "]: expected " << want[first]
       << ", got " << (double)got[first] << " (rtol " << rtol << ", atol " << atol << ")";
    report(false, name, os.str());
}

template <class T>
void check_equal(const string& name, const vector<T>& got, const vector<T>& want) {
    if (got.size() != want.size()) {
        report(false, name, "length " + std::to_string(got.size()) + " vs " + std::to_string(want.size()));
        return;
    }
    for (size_t i = 0; i < got.size(); ++i) {
        if (!(got[i] == want[i])) {
            std::ostringstream os;
            os << "first difference at [" << i << "]: expected " << +want[i] << ", got " << +got[i];
            report(false, name, os.str());
            return;
        }
    }
    report(true, name);
}

void check_true(const string& name, bool ok, const string& detail) { report(ok, name, detail); }

double max_abs(const vector<double>& v) {
    double m = 0;
    for (double x : v)
        if (std::isfinite(x)) m = std::max(m, std::fabs(x));
    return m;
}

// ---------------------------------------------------------------- inputs

std::mt19937_64 rng(20240607);

float uni(double lo, double hi) { return (float)std::uniform_real_distribution<double>(lo, hi)(rng); }
i64 uni_int(i64 lo, i64 hi) { return std::uniform_int_distribution<i64>(lo, hi)(rng); }

vector<float> rand_vec(size_t n, double lo, double hi) {
    vector<float> v(n);
    for (auto& x : v) x = uni(lo, hi);
    return v;
}

vector<double> to_d(const vector<float>& v) { return vector<double>(v.begin(), v.end()); }

// ---------------------------------------------------------------- layouts (as launch.rs)

using Shape = vector<i64>;

Shape contiguous(const Shape& shape) {
    Shape st(shape.size());
    i64 acc = 1;
    for (size_t d = shape.size(); d-- > 0;) {
        st[d] = acc;
        acc *= shape[d];
    }
    return st;
}

// Strides of `small` broadcast (numpy rules) to `out`: 0 along stretched or missing dims.
Shape broadcast(const Shape& small, const Shape& out) {
    Shape own = contiguous(small), st(out.size());
    size_t pad = out.size() - small.size();
    for (size_t d = 0; d < out.size(); ++d) st[d] = (d < pad || small[d - pad] == 1) ? 0 : own[d - pad];
    return st;
}

string shape_str(const Shape& s) {
    string r = "[";
    for (size_t d = 0; d < s.size(); ++d) r += (d ? "," : "") + std::to_string(s[d]);
    return r + "]";
}

i64 numel(const Shape& s) { return std::accumulate(s.begin(), s.end(), (i64)1, std::multiplies<i64>()); }

// `Layout::new`: with `merge`, size-1 dims are dropped and dims contiguous for every operand
// merged (as the Rust launcher does); without, every dim is kept as given.
Layout make_layout(const Shape& shape, const vector<Shape>& strides, bool merge = true) {
    vector<std::pair<i64, Shape>> dims;
    for (size_t d = 0; d < shape.size(); ++d) {
        i64 n = shape[d];
        Shape st;
        for (auto& s : strides) st.push_back(s[d]);
        if (merge) {
            if (n == 1) continue;
            if (!dims.empty()) {
                auto& [pn, pst] = dims.back();
                bool ok = true;
                for (size_t k = 0; k < st.size(); ++k) ok = ok && pst[k] == st[k] * n;
                if (ok) {
                    pn *= n;
                    pst = st;
                    continue;
                }
            }
        }
        dims.push_back({n, st});
    }
    if (dims.size() > MAXR) {
        std::fprintf(stderr, "layout of rank %zu\n", dims.size());
        std::abort();
    }
    Layout l{};
    l.rank = (int)dims.size();
    for (size_t d = 0; d < dims.size(); ++d) {
        l.shape[d] = dims[d].first;
        for (size_t k = 0; k < dims[d].second.size(); ++k) l.st[k][d] = dims[d].second[k];
    }
    return l;
}

// Multi-index of flat row-major position `i` over `shape` (the reference's own decomposition).
Shape unravel(i64 i, const Shape& shape) {
    Shape idx(shape.size());
    for (size_t d = shape.size(); d-- > 0;) {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    return idx;
}

i64 dot(const Shape& idx, const Shape& st) {
    i64 o = 0;
    for (size_t d = 0; d < idx.size(); ++d) o += idx[d] * st[d];
    return o;
}

const dim3 B256(256);

// ---------------------------------------------------------------- shim self-test

// Every thread writes the block sum, max and min of its thread id, a shuffle partner's id, and
// the block's sum of (blockIdx.x + 1) read back through shared memory.
__global__ void emu_selftest(float* sum, float* mx, float* mn, float* shfl, float* shared_out) {
    __shared__ float cell[1024];
    unsigned t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
    float v = (float)t;
    sum[g] = block_reduce(v, 0);
    mx[g] = block_reduce(v, 1);
    mn[g] = block_reduce(v + 1.0f, 2);
    shfl[g] = __shfl_xor_sync(0xffffffffu, v, 5);
    cell[t] = (float)(blockIdx.x + 1);
    __syncthreads();
    float s = 0;
    for (unsigned k = 0; k < blockDim.x; ++k) s += cell[k];
    __syncthreads();
    shared_out[g] = s;
}

void test_selftest(unsigned blocks, unsigned threads) {
    string name = "shim selftest grid " + std::to_string(blocks) + " block " + std::to_string(threads);
    set_current(name);
    size_t n = (size_t)blocks * threads;
    vector<float> sum(n), mx(n), mn(n), shfl(n), sh(n);
    launch(emu_selftest, dim3(blocks), dim3(threads), sum.data(), mx.data(), mn.data(), shfl.data(), sh.data());
    vector<double> ws(n), wm(n), wn(n), wf(n), wsh(n);
    for (size_t g = 0; g < n; ++g) {
        size_t b = g / threads, t = g % threads;
        ws[g] = (double)threads * (threads - 1) / 2;
        wm[g] = threads - 1;
        wn[g] = 1;
        wf[g] = (double)(t ^ 5);
        wsh[g] = (double)threads * (b + 1);
    }
    check_close(name + " block_reduce sum", sum, ws, 0, 0);
    check_close(name + " block_reduce max", mx, wm, 0, 0);
    check_close(name + " block_reduce min", mn, wn, 0, 0);
    check_close(name + " shfl_xor", shfl, wf, 0, 0);
    check_close(name + " shared across blocks", sh, wsh, 0, 0);
}

// ---------------------------------------------------------------- elementwise

double gelu_exact_d(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
double gelu_tanh_d(double x) {
    double k = std::sqrt(2.0 / M_PI);
    return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}
double sigmoid_d(double x) {
    if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
    double e = std::exp(x);
    return e / (1.0 + e);
}

void test_unary() {
    const size_t n = 700;  // > 2 blocks × 256 threads: the grid-stride loop runs twice
    const float specials[] = {0.0f, -0.0f, Inff, -Inff, NaNf, 1.0f, -1.0f};
    const char* names[] = {"Neg",  "Exp",  "Log",   "Sqrt",     "Reciprocal", "Sigmoid", "Tanh",      "Erf",
                           "Gelu", "GeluTanh", "Relu", "Abs", "Cos", "Sin", "Floor", "Ceil", "Softplus", "SiLU",
                           "Scale", "NaNTo", "Clip", "LeakyRelu", "Rsqrt", "Identity", "default(24)"};
    for (int op = 0; op <= 24; ++op) {
        vector<float> x;
        switch (op) {
            case 2:
            case 3:
            case 22: x = rand_vec(n, 0.05, 6.0); break;
            case 4:
                x = rand_vec(n, 0.1, 4.0);
                for (auto& v : x)
                    if (uni(0, 1) < 0.5) v = -v;
                break;
            case 16: x = rand_vec(n, -30.0, 30.0); break;
            default: x = rand_vec(n, -4.0, 4.0); break;
        }
        for (size_t k = 0; k < std::size(specials); ++k) x[37 * k + 3] = specials[k];
        x[400] = -2.0f;  // negative input of the positive-domain ops
        float a = 0, b = 0;
        if (op == 18) a = 1.7f;
        if (op == 19) a = -2.5f;
        if (op == 20) a = -1.0f, b = 1.5f;
        if (op == 21) a = 0.1f;
        vector<float> y(n, 12345.0f);
        string name = string("unary_f32 ") + std::to_string(op) + " " + names[op];
        set_current(name);
        launch(unary_f32, dim3(2), B256, op, x.data(), y.data(), (i64)n, a, b);
        vector<double> want(n);
        for (size_t i = 0; i < n; ++i) {
            double v = x[i], r;
            switch (op) {
                case 0: r = -v; break;
                case 1: r = std::exp(v); break;
                case 2: r = std::log(v); break;
                case 3: r = std::sqrt(v); break;
                case 4: r = 1.0 / v; break;
                case 5: r = sigmoid_d(v); break;
                case 6: r = std::tanh(v); break;
                case 7: r = std::erf(v); break;
                case 8: r = gelu_exact_d(v); break;
                case 9: r = gelu_tanh_d(v); break;
                case 10: r = v > 0 ? v : 0.0; break;  // the CPU's Relu: NaN → 0
                case 11: r = std::fabs(v); break;
                case 12: r = std::cos(v); break;
                case 13: r = std::sin(v); break;
                case 14: r = std::floor(v); break;
                case 15: r = std::ceil(v); break;
                case 16: r = v > 30 ? v : std::log1p(std::exp(v)); break;
                case 17: r = v * sigmoid_d(v); break;
                case 18: r = v * (double)a; break;
                case 19: r = std::isnan(v) ? (double)a : v; break;
                case 20:
                    r = v;
                    if (r < a) r = a;
                    if (r > b) r = b;
                    break;
                case 21: r = v >= 0 ? v : (double)a * v; break;
                case 22: r = 1.0 / std::sqrt(v); break;
                default: r = v; break;
            }
            // x·sigmoid(x) and x·Φ(x) at −∞ are −∞·0: NaN on the CPU too.
            if ((op == 8 || op == 9 || op == 17) && v == -Inf) r = NaN;
            want[i] = r;
        }
        check_close(name, y, want, 1e-5, 1e-6);
    }
    // Clip with the default (infinite) bounds is the identity, NaN included.
    {
        vector<float> x = rand_vec(300, -1e30, 1e30), y(300);
        x[5] = NaNf, x[6] = Inff, x[7] = -Inff;
        set_current("unary_f32 20 Clip unbounded");
        launch(unary_f32, dim3(2), B256, 20, x.data(), y.data(), (i64)300, -Inff, Inff);
        check_close("unary_f32 20 Clip unbounded", y, to_d(x), 0, 0);
    }
}

void test_is_nan() {
    const size_t n = 600;
    vector<float> x = rand_vec(n, -3, 3);
    for (size_t i = 0; i < n; i += 7) x[i] = NaNf;
    x[1] = Inff, x[2] = -Inff;
    vector<u8> y(n, 7), want(n);
    for (size_t i = 0; i < n; ++i) want[i] = std::isnan(x[i]) ? 1 : 0;
    set_current("is_nan_f32");
    launch(is_nan_f32, dim3(2), B256, x.data(), y.data(), (i64)n);
    check_equal("is_nan_f32", y, want);
}

// Output shape of numpy broadcasting.
Shape bshape(const vector<Shape>& shapes) {
    size_t r = 0;
    for (auto& s : shapes) r = std::max(r, s.size());
    Shape out(r, 1);
    for (auto& s : shapes)
        for (size_t d = 0; d < s.size(); ++d) {
            i64& o = out[r - s.size() + d];
            if (s[d] != 1) o = s[d];
        }
    return out;
}

void test_binary() {
    const char* names[] = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"};
    struct Case {
        Shape a, b;
    };
    // Broadcast both ways; both operands stretched; same shapes (merged to rank 1); a scalar
    // operand (stride 0, merged to rank 1); only size-1 dims (rank 0 after merging).
    vector<Case> cases = {{{2, 3, 4}, {3, 1}}, {{3, 1}, {2, 3, 4}}, {{5, 1, 6}, {1, 7, 6}},
                          {{4, 6}, {4, 6}},    {{2, 3, 50}, {1}},   {{1}, {1, 1}}};
    for (auto& cs : cases) {
        Shape out = bshape({cs.a, cs.b});
        i64 n = numel(out);
        Shape sa = broadcast(cs.a, out), sb = broadcast(cs.b, out);
        for (bool merge : {true, false}) {
            Layout L = make_layout(out, {sa, sb}, merge);
            for (int op = 0; op <= 6; ++op) {
                vector<float> a = rand_vec(numel(cs.a), -3, 3), b = rand_vec(numel(cs.b), -3, 3);
                if (op == 3)
                    for (auto& v : b) v = (v < 0 ? -0.5f : 0.5f) + v;
                if (op == 6)
                    for (auto& v : a) v = std::fabs(v) + 0.1f;
                if (op == 4 || op == 5) {
                    if (a.size() > 1) a[1] = NaNf;
                    b[b.size() - 1] = NaNf;
                    if (a.size() > 3) a[3] = Inff;
                }
                vector<float> y(n, 999.0f);
                std::ostringstream nm;
                nm << "binary_f32 " << names[op] << " " << shape_str(cs.a) << " with " << shape_str(cs.b)
                   << (merge ? " merged" : " unmerged");
                set_current(nm.str());
                launch(binary_f32, dim3(2), B256, op, L, a.data(), b.data(), y.data(), n);
                vector<double> want(n);
                for (i64 i = 0; i < n; ++i) {
                    Shape idx = unravel(i, out);
                    double u = a[dot(idx, sa)], v = b[dot(idx, sb)], r = 0;
                    switch (op) {
                        case 0: r = u + v; break;
                        case 1: r = u - v; break;
                        case 2: r = u * v; break;
                        case 3: r = u / v; break;
                        case 4: r = (std::isnan(u) || std::isnan(v)) ? NaN : std::max(u, v); break;
                        case 5: r = (std::isnan(u) || std::isnan(v)) ? NaN : std::min(u, v); break;
                        case 6: r = std::pow(u, v); break;
                    }
                    want[i] = r;
                }
                check_close(nm.str(), y, want, 1e-5, 1e-6);
            }
        }
    }
}

template <class T>
void compare_case(const string& kname, void (*k)(int, Layout, const T*, const T*, u8*, i64), vector<T> a,
                  vector<T> b, const Shape& as, const Shape& bs) {
    const char* names[] = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"};
    Shape out = bshape({as, bs});
    i64 n = numel(out);
    Shape sa = broadcast(as, out), sb = broadcast(bs, out);
    Layout L = make_layout(out, {sa, sb});
    for (int op = 0; op <= 4; ++op) {
        vector<u8> y(n, 9), want(n);
        string name = kname + " " + names[op];
        set_current(name);
        launch(k, dim3(2), B256, op, L, a.data(), b.data(), y.data(), n);
        for (i64 i = 0; i < n; ++i) {
            Shape idx = unravel(i, out);
            T u = a[dot(idx, sa)], v = b[dot(idx, sb)];
            bool r = op == 0 ? u == v : op == 1 ? u < v : op == 2 ? u <= v : op == 3 ? u > v : u >= v;
            want[i] = r;
        }
        check_equal(name, y, want);
    }
}

void test_compare() {
    Shape as{3, 5, 40}, bs{5, 1};
    vector<float> af(numel(as)), bf(numel(bs));
    for (auto& v : af) v = (float)uni_int(-3, 3) * 0.5f;
    for (auto& v : bf) v = (float)uni_int(-3, 3) * 0.5f;
    af[2] = NaNf, bf[1] = NaNf;
    compare_case<float>("compare_f32", compare_f32, af, bf, as, bs);
    vector<i64> ai(numel(as)), bi(numel(bs));
    for (auto& v : ai) v = uni_int(-3, 3) * 1000000000000LL;
    for (auto& v : bi) v = uni_int(-3, 3) * 1000000000000LL;
    compare_case<i64>("compare_i64", compare_i64, ai, bi, as, bs);
    vector<int> a3(numel(as)), b3(numel(bs));
    for (auto& v : a3) v = (int)uni_int(-3, 3);
    for (auto& v : b3) v = (int)uni_int(-3, 3);
    compare_case<int>("compare_i32", compare_i32, a3, b3, as, bs);
}

void test_logic() {
    const char* names[] = {"And", "Or", "Xor"};
    Shape as{3, 4, 50}, bs{3, 1, 50};
    Shape out = bshape({as, bs});
    i64 n = numel(out);
    Shape sa = broadcast(as, out), sb = broadcast(bs, out);
    Layout L = make_layout(out, {sa, sb});
    vector<u8> a(numel(as)), b(numel(bs));
    for (auto& v : a) v = (u8)uni_int(0, 2);  // 2: any nonzero byte is true
    for (auto& v : b) v = (u8)uni_int(0, 2);
    for (int op = 0; op <= 2; ++op) {
        vector<u8> y(n, 9), want(n);
        string name = string("logic_u8 ") + names[op];
        set_current(name);
        launch(logic_u8, dim3(2), B256, op, L, a.data(), b.data(), y.data(), n);
        for (i64 i = 0; i < n; ++i) {
            Shape idx = unravel(i, out);
            bool u = a[dot(idx, sa)] != 0, v = b[dot(idx, sb)] != 0;
            want[i] = (op == 0 ? (u && v) : op == 1 ? (u || v) : (u != v)) ? 1 : 0;
        }
        check_equal(name, y, want);
    }
    vector<u8> x(600), y(600, 9), want(600);
    for (size_t i = 0; i < x.size(); ++i) {
        x[i] = (u8)uni_int(0, 3);
        want[i] = x[i] ? 0 : 1;
    }
    set_current("not_u8");
    launch(not_u8, dim3(2), B256, x.data(), y.data(), (i64)x.size());
    check_equal("not_u8", y, want);
}

void test_where() {
    Shape cs{2, 1, 30}, as{3, 1}, bs{2, 3, 30};
    Shape out = bshape({cs, as, bs});
    i64 n = numel(out);
    Shape sc = broadcast(cs, out), sa = broadcast(as, out), sb = broadcast(bs, out);
    for (bool merge : {true, false}) {
        Layout L = make_layout(out, {sc, sa, sb}, merge);
        vector<u8> c(numel(cs));
        for (auto& v : c) v = (u8)uni_int(0, 2);
        vector<unsigned> a(numel(as)), b(numel(bs));
        for (auto& v : a) v = (unsigned)uni_int(0, 0xffffffffLL);
        for (auto& v : b) v = (unsigned)uni_int(0, 0xffffffffLL);
        vector<unsigned> y(n, 7), want(n);
        string name = string("where_b4 3-operand broadcast") + (merge ? "" : " unmerged");
        set_current(name);
        launch(where_b4, dim3(2), B256, L, c.data(), a.data(), b.data(), y.data(), n);
        for (i64 i = 0; i < n; ++i) {
            Shape idx = unravel(i, out);
            want[i] = c[dot(idx, sc)] ? a[dot(idx, sa)] : b[dot(idx, sb)];
        }
        check_equal(name, y, want);
    }
    {
        Shape cs2{4, 1}, as2{4, 70}, bs2{70};
        Shape out2 = bshape({cs2, as2, bs2});
        i64 n2 = numel(out2);
        Shape sc2 = broadcast(cs2, out2), sa2 = broadcast(as2, out2), sb2 = broadcast(bs2, out2);
        Layout L = make_layout(out2, {sc2, sa2, sb2});
        vector<u8> c(numel(cs2));
        for (auto& v : c) v = (u8)uni_int(0, 1);
        c[0] = 1, c[1] = 0;
        vector<unsigned long long> a(numel(as2)), b(numel(bs2));
        for (auto& v : a) v = ((unsigned long long)uni_int(0, 0xffffffffLL) << 32) | 0x1234u;
        for (auto& v : b) v = (unsigned long long)uni_int(0, 0xffffffffLL);
        vector<unsigned long long> y(n2, 7), want(n2);
        set_current("where_b8");
        launch(where_b8, dim3(2), B256, L, c.data(), a.data(), b.data(), y.data(), n2);
        for (i64 i = 0; i < n2; ++i) {
            Shape idx = unravel(i, out2);
            want[i] = c[dot(idx, sc2)] ? a[dot(idx, sa2)] : b[dot(idx, sb2)];
        }
        check_equal("where_b8", y, want);
    }
}

// As layout.rs's slice_axis: clamped (start, step, count) of one sliced axis.
std::tuple<i64, i64, i64> slice_axis(i64 d, i64 start, i64 end, i64 step) {
    auto norm = [d](i64 v) { return v < 0 ? v + d : v; };
    i64 s = norm(start), e = norm(end);
    if (step > 0) {
        s = std::clamp<i64>(s, 0, d);
        e = std::clamp<i64>(e, 0, d);
    } else {
        s = std::clamp<i64>(s, -1, d - 1);
        e = std::clamp<i64>(e, -1, d - 1);
    }
    i64 count = step > 0 ? (e > s ? (e - s + step - 1) / step : 0) : (s > e ? (s - e + (-step) - 1) / (-step) : 0);
    return {s, step, count};
}

void test_copy() {
    // Transpose [2,3,4] with perm [2,0,1] → [4,2,3].
    {
        Shape xs{2, 3, 5}, perm{2, 0, 1};
        Shape own = contiguous(xs), shape, xst;
        for (auto p : perm) shape.push_back(xs[p]), xst.push_back(own[p]);
        i64 n = numel(shape);
        vector<unsigned> x(numel(xs));
        for (size_t i = 0; i < x.size(); ++i) x[i] = 1000 + (unsigned)i;
        for (bool merge : {true, false}) {
            Layout L = make_layout(shape, {xst, contiguous(shape)}, merge);
            vector<unsigned> y(n, 7), want(n);
            string name = string("copy_b4 transpose perm [2,0,1]") + (merge ? "" : " unmerged");
            set_current(name);
            launch(copy_b4, dim3(1), B256, L, x.data(), (i64)0, y.data(), (i64)0, n);
            // y[i, j, k] = x[j, k, i]
            for (i64 i = 0; i < shape[0]; ++i)
                for (i64 j = 0; j < shape[1]; ++j)
                    for (i64 k = 0; k < shape[2]; ++k)
                        want[(i * shape[1] + j) * shape[2] + k] = x[(j * xs[1] + k) * xs[2] + i];
            check_equal(name, y, want);
        }
    }
    // Slice: x [6, 40], axis 0 start 1 end 6 step 2, axis 1 start -1 end -100 step -3.
    {
        Shape xs{6, 40};
        Shape own = contiguous(xs), shape = xs, xst = own;
        i64 base = 0;
        i64 starts[] = {1, -1}, ends[] = {6, -100}, steps[] = {2, -3};
        for (int a = 0; a < 2; ++a) {
            auto [s, step, count] = slice_axis(xs[a], starts[a], ends[a], steps[a]);
            shape[a] = count;
            if (count > 0) base += s * own[a];
            xst[a] = step * own[a];
        }
        i64 n = numel(shape);
        vector<unsigned> x(numel(xs));
        for (size_t i = 0; i < x.size(); ++i) x[i] = 5000 + (unsigned)i;
        Layout L = make_layout(shape, {xst, contiguous(shape)});
        vector<unsigned> y(n, 7), want;
        for (i64 r = 1; r < 6; r += 2)
            for (i64 c = 39; c >= 0; c -= 3) want.push_back(x[r * 40 + c]);
        set_current("copy_b4 slice negative step");
        launch(copy_b4, dim3(1), B256, L, x.data(), base, y.data(), (i64)0, n);
        check_true("copy_b4 slice shape", shape[0] == 3 && shape[1] == 14 && n == (i64)want.size(),
                   "shape " + std::to_string(shape[0]) + "x" + std::to_string(shape[1]));
        check_equal("copy_b4 slice negative step", y, want);
    }
    // Concat: x [3, 70] into the columns 20..90 of y [3, 100] (a y base offset).
    {
        Shape xs{3, 70}, ys{3, 100};
        Shape yst = contiguous(ys);
        i64 n = numel(xs), ybase = 20 * yst[1];
        vector<unsigned> x(n), y(numel(ys), 7), want(numel(ys), 7);
        for (size_t i = 0; i < x.size(); ++i) x[i] = 9000 + (unsigned)i;
        for (i64 r = 0; r < 3; ++r)
            for (i64 c = 0; c < 70; ++c) want[r * 100 + 20 + c] = x[r * 70 + c];
        Layout L = make_layout(xs, {contiguous(xs), yst});
        set_current("copy_b4 concat");
        launch(copy_b4, dim3(1), B256, L, x.data(), (i64)0, y.data(), ybase, n);
        check_equal("copy_b4 concat (y base)", y, want);
    }
    // copy_b8 as Expand [3, 1] → [2, 3, 50].
    {
        Shape xs{3, 1}, out{2, 3, 50};
        Shape xst = broadcast(xs, out);
        i64 n = numel(out);
        vector<unsigned long long> x = {0x1111222233334444ull, 0x5555666677778888ull, 0x9999aaaabbbbccccull};
        vector<unsigned long long> y(n, 7), want(n);
        for (i64 i = 0; i < n; ++i) want[i] = x[(i / 50) % 3];
        Layout L = make_layout(out, {xst, contiguous(out)});
        set_current("copy_b8 expand");
        launch(copy_b8, dim3(1), B256, L, x.data(), (i64)0, y.data(), (i64)0, n);
        check_equal("copy_b8 expand", y, want);
    }
}

void test_gather() {
    // x [2, 5, 3] gathered on axis 1 with indices [2, 2].
    const i64 outer = 2, dim = 5, inner = 3;
    vector<unsigned> x(outer * dim * inner);
    for (size_t i = 0; i < x.size(); ++i) x[i] = 100 + (unsigned)i;
    auto run = [&](const vector<i64>& idx, const string& name, i64 want_err) {
        i64 nidx = (i64)idx.size(), n = outer * nidx * inner;
        vector<unsigned> y(n, 0xdeadbeef), want(n);
        for (i64 o = 0; o < outer; ++o)
            for (i64 j = 0; j < nidx; ++j)
                for (i64 k = 0; k < inner; ++k) {
                    i64 t = idx[j] < 0 ? idx[j] + dim : idx[j];
                    want[(o * nidx + j) * inner + k] = (t < 0 || t >= dim) ? 0 : x[(o * dim + t) * inner + k];
                }
        i64 err = 0;
        set_current(name);
        launch(gather_b4_i64, dim3(1), B256, x.data(), idx.data(), y.data(), outer, dim, nidx, inner, &err);
        check_equal(name, y, want);
        check_true(name + " err", err == want_err,
                   "err = " + std::to_string(err) + ", expected " + std::to_string(want_err));
    };
    run({0, -1, 4, 2}, "gather_b4_i64 axis 1 (negative index)", 0);
    run({1, 5, -6, 2}, "gather_b4_i64 out of range", 1);
    // A 1-D launch over more elements than threads, with i32 indices and 8-byte elements.
    {
        const i64 o2 = 3, d2 = 7, in2 = 30;
        vector<unsigned long long> x2(o2 * d2 * in2);
        for (size_t i = 0; i < x2.size(); ++i) x2[i] = 0x100000000ull * i + 3;
        vector<int> idx = {6, 0, -7, 3, -1, 2, 2};
        i64 nidx = (i64)idx.size(), n = o2 * nidx * in2;
        vector<unsigned long long> y(n, 1), want(n);
        for (i64 o = 0; o < o2; ++o)
            for (i64 j = 0; j < nidx; ++j)
                for (i64 k = 0; k < in2; ++k) {
                    i64 t = idx[j] < 0 ? idx[j] + d2 : idx[j];
                    want[(o * nidx + j) * in2 + k] = x2[(o * d2 + t) * in2 + k];
                }
        i64 err = 0;
        set_current("gather_b8_i32");
        launch(gather_b8_i32, dim3(2), B256, x2.data(), idx.data(), y.data(), o2, d2, nidx, in2, &err);
        check_equal("gather_b8_i32", y, want);
        check_true("gather_b8_i32 err", err == 0, "err = " + std::to_string(err));
    }
}

// GatherND reference (ONNX semantics): tuple t's position over the indices' leading dims gives
// its batch coordinates directly; a component outside the dim after one wrap makes the tuple's
// slice zero and clears `ok`.
template <class T>
vector<T> ref_gather_nd(const vector<T>& x, const Shape& xs, const vector<i64>& idx, const Shape& is, size_t batch,
                        bool& ok) {
    size_t k = (size_t)is.back();
    Shape ts(is.begin(), is.end() - 1), xst = contiguous(xs);
    i64 tuples = numel(ts), inner = numel(Shape(xs.begin() + batch + k, xs.end()));
    vector<T> y(tuples * inner);
    ok = true;
    for (i64 t = 0; t < tuples; ++t) {
        Shape pos = unravel(t, ts);
        i64 off = 0;
        bool bad = false;
        for (size_t d = 0; d < batch; ++d) off += pos[d] * xst[d];
        for (size_t d = 0; d < k; ++d) {
            i64 v = idx[t * k + d], dim = xs[batch + d];
            if (v < 0) v += dim;
            if (v < 0 || v >= dim) bad = true;
            off += v * xst[batch + d];
        }
        ok = ok && !bad;
        for (i64 j = 0; j < inner; ++j) y[t * inner + j] = bad ? (T)0 : x[off + j];
    }
    return y;
}

// Runs a gather_nd_bN kernel as the Rust launcher does (layout.rs `gather_nd`) and checks it
// against the reference: output and error flag (`want_err`, 1 when an index is out of range).
template <class T>
void gather_nd_case(const string& name, void (*kern)(NdTuple, const T*, const i64*, T*, i64, i64, i64, i64, i64*),
                    const vector<T>& x, const Shape& xs, const vector<i64>& idx, const Shape& is, size_t batch,
                    i64 want_err, unsigned blocks, vector<T>* out = nullptr) {
    size_t k = (size_t)is.back();
    Shape xst = contiguous(xs);
    NdTuple P{};
    P.k = (int)k;
    for (size_t d = 0; d < k; ++d) P.dim[d] = xs[batch + d], P.st[d] = xst[batch + d];
    i64 inner = numel(Shape(xs.begin() + batch + k, xs.end()));
    i64 batch_size = numel(Shape(xs.begin(), xs.begin() + batch));
    i64 tuples = numel(Shape(is.begin(), is.end() - 1));
    i64 per_batch = std::max<i64>(tuples / std::max<i64>(batch_size, 1), 1);
    i64 batch_stride = batch > 0 ? xst[batch - 1] : 0;
    bool ok = true;
    vector<T> want = ref_gather_nd(x, xs, idx, is, batch, ok);
    vector<T> y(want.size(), (T)0x5a);
    i64 err = 0;
    set_current(name);
    launch(kern, dim3(blocks), B256, P, x.data(), idx.data(), y.data(), tuples, per_batch, batch_stride, inner, &err);
    check_equal(name, y, want);
    check_true(name + " reference", (ok ? 0 : 1) == want_err, "the case's indices are not what its name says");
    check_true(name + " err", err == want_err,
               "err = " + std::to_string(err) + ", expected " + std::to_string(want_err));
    if (out) *out = y;
}

void test_gather_nd() {
    // Llama's attention mask in miniature: mask [b, s] (bool bytes) gathered with indices
    // [b, 1, s, s, 2] whose tuple at [i, 0, q, j] is (i, j): y[i, 0, q, j] = mask[i, j].
    {
        const i64 b = 2, s = 5;
        vector<u8> mask = {1, 1, 1, 0, 0, 1, 1, 1, 1, 1};
        vector<i64> idx;
        for (i64 i = 0; i < b; ++i)
            for (i64 q = 0; q < s; ++q)
                for (i64 j = 0; j < s; ++j) idx.push_back(i), idx.push_back(j);
        vector<u8> y;
        gather_nd_case<u8>("gather_nd_b1 llama mask", gather_nd_b1, mask, {b, s}, idx, {b, 1, s, s, 2}, 0, 0, 1, &y);
        bool direct = y.size() == (size_t)(b * s * s);
        for (i64 i = 0; i < b && direct; ++i)
            for (i64 q = 0; q < s; ++q)
                for (i64 j = 0; j < s; ++j) direct = direct && y[(i * s + q) * s + j] == mask[i * s + j];
        check_true("gather_nd_b1 llama mask is mask[i, j]", direct, "y[i, 0, q, j] != mask[i, j]");
    }
    // A trailing slice: x [3, 4, 6] with tuples of 2 (negative components too) → [5, 6].
    {
        vector<unsigned> x(3 * 4 * 6);
        for (size_t i = 0; i < x.size(); ++i) x[i] = 1000 + (unsigned)i;
        gather_nd_case<unsigned>("gather_nd_b4 trailing slice", gather_nd_b4, x, {3, 4, 6},
                                 {0, 0, 2, 3, -1, -4, 1, 2, -3, -1}, {5, 2}, 0, 0, 1);
        gather_nd_case<unsigned>("gather_nd_b4 out of range", gather_nd_b4, x, {3, 4, 6},
                                 {0, 0, 3, 1, 1, -5, 2, 2}, {4, 2}, 0, 1, 1);
        // Tuples of length 0: each one takes the whole data.
        gather_nd_case<unsigned>("gather_nd_b4 empty tuples", gather_nd_b4, x, {3, 4, 6}, {}, {2, 0}, 0, 0, 1);
    }
    // 8-byte elements over more elements than the grid's threads (several grid-stride turns).
    {
        vector<unsigned long long> x(7 * 40);
        for (size_t i = 0; i < x.size(); ++i) x[i] = 0x100000000ull * i + 5;
        vector<i64> idx;
        for (i64 t = 0; t < 20; ++t) idx.push_back(t % 14 - 7);
        gather_nd_case<unsigned long long>("gather_nd_b8 rows, negative indices", gather_nd_b8, x, {7, 40}, idx,
                                           {20, 1}, 0, 0, 2);
        idx[13] = 7;
        gather_nd_case<unsigned long long>("gather_nd_b8 out of range", gather_nd_b8, x, {7, 40}, idx, {20, 1}, 0, 1,
                                           2);
    }
    // 2-byte elements, full tuples (one element each).
    {
        vector<unsigned short> x(3 * 4 * 5);
        for (size_t i = 0; i < x.size(); ++i) x[i] = (unsigned short)(0x8000 + 7 * i);
        gather_nd_case<unsigned short>("gather_nd_b2 full tuples", gather_nd_b2, x, {3, 4, 5},
                                       {0, 0, 0, 2, 3, 4, -1, -1, -1, 1, -4, 2, -3, 0, -5, 2, 1, 3},
                                       {2, 3, 3}, 0, 0, 1);
        gather_nd_case<unsigned short>("gather_nd_b2 out of range", gather_nd_b2, x, {3, 4, 5},
                                       {0, 0, 0, 2, 3, 5, -1, -1, -1}, {3, 3}, 0, 1, 1);
    }
    // batch_dims 1 and 2.
    {
        vector<unsigned> x(2 * 3 * 4 * 5);
        for (size_t i = 0; i < x.size(); ++i) x[i] = 50000 + 3 * (unsigned)i;
        vector<i64> idx1 = {2, 0, -1, 1, 1, 0, -3, 2, 2, 1};  // [2, 5, 1]
        gather_nd_case<unsigned>("gather_nd_b4 batch_dims 1", gather_nd_b4, x, {2, 3, 20}, idx1, {2, 5, 1}, 1, 0, 1);
        vector<i64> idx2;
        for (i64 t = 0; t < 2 * 3 * 2; ++t) idx2.push_back(t % 4 - 2), idx2.push_back(4 - t % 9);
        gather_nd_case<unsigned>("gather_nd_b4 batch_dims 2", gather_nd_b4, x, {2, 3, 4, 5}, idx2, {2, 3, 2, 2}, 2, 0, 1);
        idx1[4] = 3;
        gather_nd_case<unsigned>("gather_nd_b4 batch_dims 1 out of range", gather_nd_b4, x, {2, 3, 20}, idx1,
                                 {2, 5, 1}, 1, 1, 1);
    }
}

void test_casts() {
    const size_t n = 600;
    vector<float> xf = rand_vec(n, -100, 100);
    xf[0] = 0.0f, xf[1] = -0.0f, xf[2] = -2.7f, xf[3] = 2.7f, xf[4] = NaNf;
    {
        vector<float> xs = xf;
        xs[4] = 1.5f;  // NaN → int is undefined on both sides
        vector<i64> y(n, 7), want(n);
        for (size_t i = 0; i < n; ++i) want[i] = (i64)std::trunc((double)xs[i]);
        set_current("cast_f32_i64");
        launch(cast_f32_i64, dim3(2), B256, xs.data(), y.data(), (i64)n);
        check_equal("cast_f32_i64 (truncates)", y, want);
    }
    {
        vector<u8> y(n, 7), want(n);
        for (size_t i = 0; i < n; ++i) want[i] = xf[i] != 0.0f;  // NaN → true, −0 → false
        set_current("cast_f32_bool");
        launch(cast_f32_bool, dim3(2), B256, xf.data(), y.data(), (i64)n);
        check_equal("cast_f32_bool", y, want);
    }
    vector<i64> xi(n);
    for (auto& v : xi) v = uni_int(-(1LL << 40), 1LL << 40);
    xi[0] = 0, xi[1] = -1, xi[2] = 16777217;  // not representable in f32: rounds to even
    {
        vector<float> y(n, 7);
        vector<double> want(n);
        for (size_t i = 0; i < n; ++i) want[i] = (double)(float)xi[i];
        set_current("cast_i64_f32");
        launch(cast_i64_f32, dim3(2), B256, xi.data(), y.data(), (i64)n);
        check_close("cast_i64_f32", y, want, 0, 0);
    }
    {
        vector<u8> y(n, 7), want(n);
        for (size_t i = 0; i < n; ++i) want[i] = xi[i] != 0;
        set_current("cast_i64_bool");
        launch(cast_i64_bool, dim3(2), B256, xi.data(), y.data(), (i64)n);
        check_equal("cast_i64_bool", y, want);
    }
    vector<u8> xb(n);
    for (auto& v : xb) v = (u8)uni_int(0, 2);
    {
        vector<float> y(n, 7);
        vector<double> want(n);
        for (size_t i = 0; i < n; ++i) want[i] = xb[i] ? 1.0 : 0.0;
        set_current("cast_bool_f32");
        launch(cast_bool_f32, dim3(2), B256, xb.data(), y.data(), (i64)n);
        check_close("cast_bool_f32", y, want, 0, 0);
    }
    {
        vector<i64> y(n, 7), want(n);
        for (size_t i = 0; i < n; ++i) want[i] = xb[i] ? 1 : 0;
        set_current("cast_bool_i64");
        launch(cast_bool_i64, dim3(2), B256, xb.data(), y.data(), (i64)n);
        check_equal("cast_bool_i64", y, want);
    }
    {
        vector<int> y(n, 7), want(n);
        for (size_t i = 0; i < n; ++i) want[i] = (int)(i64)(xi[i] % 100000);
        vector<i64> xs(n);
        for (size_t i = 0; i < n; ++i) xs[i] = xi[i] % 100000;
        set_current("cast_i64_i32");
        launch(cast_i64_i32, dim3(2), B256, xs.data(), y.data(), (i64)n);
        check_equal("cast_i64_i32", y, want);
    }
}

// ---------------------------------------------------------------- bf16

// The value bf16 bits `k` stand for, with the exponent field 255 read as one more binade (so
// 0x7f80 is 2^128, the point past which IEEE rounding gives inf): the reference's own decoding.
double bf16_value(unsigned k) {
    double sign = (k & 0x8000u) ? -1.0 : 1.0;
    unsigned e = (k >> 7) & 0xffu, m = k & 0x7fu;
    return sign * (e == 0 ? std::ldexp((double)m, -133) : std::ldexp((double)(128 + m), (int)e - 134));
}

// `x` rounded to the nearest bf16, ties to the even pattern, overflow to ±inf, by searching
// the finite magnitudes (monotone in their bits) — independent of the kernels' bit trick.
// NaN is returned as NaN; callers check NaN bits separately.
double bf16_round(double x) {
    if (std::isnan(x)) return NaN;
    if (std::isinf(x)) return x;
    double a = std::fabs(x);
    unsigned lo = 0, hi = 0x7f80u;  // bf16_value(lo) <= a < bf16_value(hi), or a ≥ 2^128
    if (a >= bf16_value(hi)) return std::copysign(Inf, x);
    while (hi - lo > 1) {
        unsigned mid = (lo + hi) / 2;
        (bf16_value(mid) <= a ? lo : hi) = mid;
    }
    double dl = a - bf16_value(lo), dh = bf16_value(hi) - a;
    unsigned k = dl < dh ? lo : dh < dl ? hi : ((lo & 1u) ? hi : lo);
    return std::copysign(k == 0x7f80u ? Inf : bf16_value(k), x);
}

float f32_bits(unsigned int b) { return __uint_as_float(b); }

vector<double> bf16_values(const vector<bf16_t>& v) {
    vector<double> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[i] = bf16_value(v[i]);
    for (size_t i = 0; i < v.size(); ++i)
        if ((v[i] & 0x7fffu) > 0x7f80u) r[i] = NaN;
        else if ((v[i] & 0x7fffu) == 0x7f80u) r[i] = (v[i] & 0x8000u) ? -Inf : Inf;
    return r;
}

// f32 → bf16: random bit patterns over every exponent (subnormals and NaNs included) and the
// edge cases: ties to even both ways, a tie with sticky bits only in the lowest mantissa bits
// (what rounding through f64 with a truncated low word gets wrong), overflow to inf, NaNs of
// every kind. Values against bf16_round; NaN bits against the documented (x >> 16) | 0x40.
void test_cast_f32_bf16() {
    vector<unsigned int> bits = {
        0x00000000u, 0x80000000u,  // ±0
        0x3f808000u, 0x3f818000u,  // ties: even stays, odd rounds up
        0x3f808001u, 0x3f807fffu,  // tie + lowest bit: up; just below the tie: down
        0xbf818000u, 0xbf808001u,  // the same, negative
        0x7f7fffffu, 0x7f7f7fffu, 0x7f7f8000u, 0xff7f8000u,  // largest finite: inf; below; ties at the top
        0x7f800000u, 0xff800000u,  // ±inf
        0x7fc00000u, 0xffc12345u, 0x7f800001u, 0x7fbfffffu, 0xff800001u,  // quiet, payload, signalling NaNs
        0x00008000u, 0x00018000u, 0x00007fffu, 0x00008001u,  // subnormal ties and neighbours
        0x807fffffu, 0x00000001u, 0x007f8000u,  // largest subnormal rounds to the smallest normal
    };
    const size_t specials = bits.size();
    while (bits.size() < 4000) bits.push_back((unsigned int)uni_int(0, 0xffffffffLL));
    const size_t n = bits.size();
    vector<float> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = f32_bits(bits[i]);
    vector<bf16_t> y(n, 0x1234);
    set_current("cast_f32_bf16");
    launch(cast_f32_bf16, dim3(2), B256, (const float*)x.data(), y.data(), (i64)n);
    vector<double> want(n);
    for (size_t i = 0; i < n; ++i) want[i] = bf16_round((double)x[i]);
    check_close("cast_f32_bf16 rounds to nearest even (" + std::to_string(specials) + " edge cases + random bits)",
                bf16_values(y), want, 0, 0);
    bool nan_ok = true, zero_ok = true;
    for (size_t i = 0; i < n; ++i) {
        if (std::isnan(x[i])) nan_ok = nan_ok && y[i] == (bf16_t)((bits[i] >> 16) | 0x40u);
        if (x[i] == 0.0f) zero_ok = zero_ok && y[i] == (bf16_t)(bits[i] >> 16);
    }
    check_true("cast_f32_bf16 NaN keeps sign and payload, quiet bit set", nan_ok, "NaN bits differ");
    check_true("cast_f32_bf16 keeps the sign of zero", zero_ok, "−0 lost its sign");
    check_equal("cast_f32_bf16 edge cases (bits)", vector<bf16_t>(y.begin(), y.begin() + specials),
                vector<bf16_t>{0x0000, 0x8000, 0x3f80, 0x3f82, 0x3f81, 0x3f80, 0xbf82, 0xbf81, 0x7f80, 0x7f7f,
                               0x7f80, 0xff80, 0x7f80, 0xff80, 0x7fc0, 0xffc1, 0x7fc0, 0x7fff, 0xffc0, 0x0000,
                               0x0002, 0x0000, 0x0001, 0x8080, 0x0000, 0x0080});
}

// bf16 → f32 over all 65,536 patterns (exact), and bf16 → f32 → bf16 is the identity on every
// non-NaN pattern.
void test_cast_bf16_f32() {
    const size_t n = 1 << 16;
    vector<bf16_t> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = (bf16_t)i;
    vector<float> y(n, 7.0f);
    set_current("cast_bf16_f32");
    launch(cast_bf16_f32, dim3(3), B256, (const bf16_t*)x.data(), y.data(), (i64)n);
    check_close("cast_bf16_f32 every pattern (exact)", y, bf16_values(x), 0, 0);
    vector<bf16_t> back(n, 0x1234);
    launch(cast_f32_bf16, dim3(3), B256, (const float*)y.data(), back.data(), (i64)n);
    bool ok = true;
    size_t first = 0;
    for (size_t i = 0; i < n && ok; ++i) {
        bool nan = (x[i] & 0x7fffu) > 0x7f80u;
        ok = nan ? back[i] == (bf16_t)(x[i] | 0x40u) : back[i] == x[i];
        first = i;
    }
    check_true("cast_bf16_f32 then cast_f32_bf16 is the identity (NaN: quieted)", ok,
               "pattern " + std::to_string(first) + " came back as " + std::to_string(back[first]));
}

void test_cast_bf16_bool() {
    vector<bf16_t> x = {0x0000, 0x8000, 0x0001, 0x3f80, 0xbf80, 0x7f80, 0x7fc0, 0xffc1, 0x8001};
    while (x.size() < 600) x.push_back((bf16_t)uni_int(0, 0xffff));
    const size_t n = x.size();
    vector<u8> y(n, 7), want(n);
    for (size_t i = 0; i < n; ++i) want[i] = (x[i] & 0x7fffu) != 0;  // NaN → true, −0 → false
    set_current("cast_bf16_bool");
    launch(cast_bf16_bool, dim3(2), B256, (const bf16_t*)x.data(), y.data(), (i64)n);
    check_equal("cast_bf16_bool", y, want);
    vector<u8> b(n);
    for (auto& v : b) v = (u8)uni_int(0, 2);
    vector<bf16_t> z(n, 0x1234), wz(n);
    for (size_t i = 0; i < n; ++i) wz[i] = b[i] ? 0x3f80 : 0x0000;
    launch(cast_bool_bf16, dim3(2), B256, (const u8*)b.data(), z.data(), (i64)n);
    check_equal("cast_bool_bf16", z, wz);
}

// Random bf16 values in [lo, hi) (rounded from f32).
vector<bf16_t> rand_bf16(size_t n, double lo, double hi) {
    vector<bf16_t> v(n);
    for (auto& x : v) x = f32_to_bf16(uni(lo, hi));
    return v;
}

// binary_bf16 with the backend's bf16 codes (Add, Sub, Mul, Max, Min) over the broadcast
// shapes of test_binary: the exact result of the widened operands rounded once (bf16_round),
// with ties, overflow, subnormals, inf and NaN among the operands.
void test_binary_bf16() {
    const char* names[] = {"Add", "Sub", "Mul", "Div", "Max", "Min"};
    struct Case {
        Shape a, b;
    };
    vector<Case> cases = {{{2, 3, 4}, {3, 1}}, {{3, 1}, {2, 3, 4}}, {{5, 1, 6}, {1, 7, 6}},
                          {{4, 6}, {4, 6}},    {{2, 3, 50}, {1}},   {{1}, {1, 1}}};
    // (a, b) pairs planted at the first elements of same-shape operands: sums on a tie (even:
    // stays, odd: rounds up), overflow to inf, subnormals, inf − inf, NaN.
    vector<std::pair<bf16_t, bf16_t>> planted = {{0x3f80, 0x3b80}, {0x3f81, 0x3b80}, {0x7f7f, 0x7f7f},
                                                 {0x0001, 0x0001}, {0x7f80, 0xff80}, {0x7fc0, 0x3f80},
                                                 {0x8000, 0x0000}, {0x4040, 0xc040}};
    for (auto& cs : cases) {
        Shape out = bshape({cs.a, cs.b});
        i64 n = numel(out);
        Shape sa = broadcast(cs.a, out), sb = broadcast(cs.b, out);
        bool same = cs.a == cs.b;
        Layout L = make_layout(out, {sa, sb});
        for (int op : {0, 1, 2, 4, 5}) {
            vector<bf16_t> a = rand_bf16(numel(cs.a), -3, 3), b = rand_bf16(numel(cs.b), -3, 3);
            if (same)
                for (size_t k = 0; k < planted.size(); ++k) a[k] = planted[k].first, b[k] = planted[k].second;
            vector<bf16_t> y(n, 0x1234);
            std::ostringstream nm;
            nm << "binary_bf16 " << names[op] << " " << shape_str(cs.a) << " with " << shape_str(cs.b);
            set_current(nm.str());
            launch(binary_bf16, dim3(2), B256, op, L, (const bf16_t*)a.data(), (const bf16_t*)b.data(), y.data(), n);
            vector<double> want(n);
            for (i64 i = 0; i < n; ++i) {
                Shape idx = unravel(i, out);
                double u = bf16_values({a[dot(idx, sa)]})[0], v = bf16_values({b[dot(idx, sb)]})[0], r = 0;
                switch (op) {
                    case 0: r = u + v; break;
                    case 1: r = u - v; break;
                    case 2: r = u * v; break;
                    case 4: r = (std::isnan(u) || std::isnan(v)) ? NaN : std::max(u, v); break;
                    case 5: r = (std::isnan(u) || std::isnan(v)) ? NaN : std::min(u, v); break;
                }
                want[i] = bf16_round(r);
            }
            check_close(nm.str() + " (rounded once)", bf16_values(y), want, 0, 0);
        }
    }
}

// An elementwise chain (an RMSNorm-like scaling by a [b, t, 1] and a [d] operand, a bf16
// residual, SiLU, a cast to bf16, a Pow by a scalar, Tanh, Sub, Div) with four outputs: a bf16
// one, two f32 ones and one smaller than the chain ([b, t, 1], written through broadcast
// strides). Against the same program in double precision; the grid is smaller than the
// element count, so the grid-stride loop takes several turns.
void test_elementwise_chain() {
    const Shape full = {2, 3, 50}, rs = {2, 3, 1}, ws = {50}, one = {};
    const i64 n = numel(full);
    vector<float> x = rand_vec(n, -2, 2), r = rand_vec(numel(rs), 0.2, 1.5), w = rand_vec(50, -1, 1), two = {2.0f};
    vector<bf16_t> h = rand_bf16(n, -1, 1);
    ChainArgs p{};
    p.rank = 3;
    // Input 5 is a SumToShape's dims: never loaded (its address is null), so registers from
    // 6 on are the steps'; the table below numbers them from 5 and `R` shifts them.
    p.n_in = 6;
    p.in_kind[5] = 2;
    auto R = [](int reg) { return reg >= 5 ? reg + 1 : reg; };
    for (int d = 0; d < 3; ++d) p.shape[d] = full[d];
    const vector<Shape> in_shapes = {full, rs, ws, full, one};
    const void* in_ptrs[] = {x.data(), r.data(), w.data(), h.data(), two.data()};
    for (int k = 0; k < 5; ++k) {
        Shape st = broadcast(in_shapes[k], full);
        for (int d = 0; d < 3; ++d) p.in_st[k][d] = st[d];
        p.in_ptr[k] = (u64)(uintptr_t)in_ptrs[k];
        p.in_kind[k] = k == 3;
    }
    // {kind, code, a, b}: registers 0..4 inputs, 5 + s step s.
    const int steps[][4] = {
        {1, 2, 0, 1},   // 5  a = x · r
        {1, 2, 2, 5},   // 6  b = w · a
        {3, 0, 3, -1},  // 7  hf = f32(h)
        {1, 0, 6, 7},   // 8  c = b + hf
        {0, 5, 8, -1},  // 9  s = sigmoid(c)
        {1, 2, 8, 9},   // 10 silu = c · s
        {2, 0, 10, -1}, // 11 e = bf16(silu)
        {1, 6, 8, 4},   // 12 q = c ^ 2
        {0, 6, 12, -1}, // 13 t = tanh(q)
        {1, 1, 13, 9},  // 14 u = t − s
        {1, 3, 14, 4},  // 15 v = u / 2
        {1, 2, 1, 1},   // 16 rr = r · r
        {1, 2, 11, 4},  // 17 e2 = e · 2 (reads the value rounded to bf16)
        {3, 0, 17, 5},  // 18 e2 through a SumToShape that copies (b: the unloaded dims)
    };
    p.n_steps = 14;
    for (int k = 0; k < p.n_steps; ++k) {
        p.kind[k] = steps[k][0], p.code[k] = steps[k][1], p.a[k] = R(steps[k][2]);
        p.b[k] = steps[k][3] < 0 ? -1 : k == 13 ? 5 : R(steps[k][3]);
    }
    vector<bf16_t> e(n, 0x1234);
    vector<float> s_out(n, -7.0f), v_out(n, -7.0f), rr_out(numel(rs), -7.0f), e2(n, -7.0f), e2_copy(n, -7.0f);
    const int regs[] = {11, 9, 15, 16, 17, 18};
    void* out_ptrs[] = {e.data(), s_out.data(), v_out.data(), rr_out.data(), e2.data(), e2_copy.data()};
    const vector<Shape> out_shapes = {full, full, full, rs, full, full};
    p.n_out = 6;
    for (int k = 0; k < 6; ++k) {
        Shape st = out_shapes[k] == full ? contiguous(full) : broadcast(out_shapes[k], full);
        for (int d = 0; d < 3; ++d) p.out_st[k][d] = st[d];
        p.out_ptr[k] = (u64)(uintptr_t)out_ptrs[k];
        p.out_bf16[k] = k == 0;
        p.out_reg[k] = R(regs[k]);
    }
    set_current("elementwise_chain");
    launch(elementwise_chain, dim3(1), B256, p, n);
    vector<double> want_e(n), want_s(n), want_v(n), want_rr(numel(rs));
    const Shape sr = broadcast(rs, full), sw = broadcast(ws, full);
    for (i64 i = 0; i < n; ++i) {
        Shape idx = unravel(i, full);
        double rv = r[dot(idx, sr)], a = (double)x[i] * rv, b = (double)w[dot(idx, sw)] * a;
        double c = b + bf16_values({h[i]})[0], s = 1.0 / (1.0 + std::exp(-c));
        want_e[i] = bf16_round(c * s);
        want_s[i] = s;
        want_v[i] = (std::tanh(c * c) - s) / 2.0;
        want_rr[dot(idx, sr)] = rv * rv;
    }
    check_close("elementwise_chain bf16 output (within a bf16 step)", bf16_values(e), want_e, 1.0 / 128, 1e-6);
    check_close("elementwise_chain f32 output", s_out, want_s, 1e-5, 1e-6);
    check_close("elementwise_chain f32 output of Pow/Tanh/Sub/Div", v_out, want_v, 1e-5, 1e-6);
    check_close("elementwise_chain output smaller than the chain", rr_out, want_rr, 1e-6, 0);
    vector<double> twice_e = bf16_values(e);
    for (double& v : twice_e) v *= 2;
    check_close("elementwise_chain steps after a cast read the bf16 value", e2, twice_e, 0, 0);
    check_close("elementwise_chain SumToShape copy (dims never loaded)", e2_copy, twice_e, 0, 0);
}

// The same kernel on a layout merged to one dim (what the launcher passes when every operand
// is contiguous or a scalar): offsets without division.
void test_elementwise_chain_one_dim() {
    const i64 n = 700;
    vector<float> x = rand_vec(n, -2, 2), two = {2.0f};
    vector<bf16_t> h = rand_bf16(n, -1, 1);
    ChainArgs p{};
    p.rank = 1;
    p.shape[0] = n;
    p.n_in = 3;
    const void* in_ptrs[] = {x.data(), h.data(), two.data()};
    const i64 in_st[] = {1, 1, 0};
    for (int k = 0; k < 3; ++k) p.in_st[k][0] = in_st[k], p.in_ptr[k] = (u64)(uintptr_t)in_ptrs[k];
    p.in_kind[1] = 1;
    const int steps[][4] = {{3, 0, 1, -1}, {1, 0, 0, 3}, {1, 2, 4, 2}};  // hf = f32(h); y = x + hf; z = y · 2
    p.n_steps = 3;
    for (int k = 0; k < 3; ++k) p.kind[k] = steps[k][0], p.code[k] = steps[k][1], p.a[k] = steps[k][2], p.b[k] = steps[k][3];
    vector<float> z(n, -7.0f);
    p.n_out = 1;
    p.out_st[0][0] = 1;
    p.out_ptr[0] = (u64)(uintptr_t)z.data();
    p.out_reg[0] = 5;
    set_current("elementwise_chain one dim");
    launch(elementwise_chain, dim3(2), B256, p, n);
    vector<double> want(n);
    for (i64 i = 0; i < n; ++i) want[i] = 2.0 * ((double)x[i] + bf16_values({h[i]})[0]);
    check_close("elementwise_chain on one merged dim", z, want, 1e-6, 1e-7);
}

void test_fill_rows_bf16() {
    const i64 rows = 40, cols = 15;
    vector<bf16_t> b = rand_bf16(cols, -2, 2), y(rows * cols, 0x1234), want(rows * cols);
    for (i64 i = 0; i < rows * cols; ++i) want[i] = b[i % cols];
    set_current("fill_rows_bf16");
    launch(fill_rows_bf16, dim3(2), B256, (const bf16_t*)b.data(), y.data(), rows, cols);
    check_equal("fill_rows_bf16", y, want);
}

// IndexMapGrad's scatter: dx[map[i] − 1] += dy[i] where map[i] > 0, dx zeroed by fill_f32.
void test_scatter_add() {
    // Many-to-one (atomic accumulation from threads of both blocks), with skipped entries.
    {
        const i64 m = 700, n = 50;
        vector<float> dy = rand_vec(m, -1, 1), dx(n, 123.0f);
        vector<int> map(m);
        for (auto& s : map) s = (int)uni_int(-2, n);  // ≤ 0: skipped
        vector<double> want(n, 0.0), mag(n, 0.0);
        for (i64 i = 0; i < m; ++i)
            if (map[i] > 0) want[map[i] - 1] += dy[i], mag[map[i] - 1] += std::fabs(dy[i]);
        set_current("scatter_add_f32 many-to-one");
        launch(fill_f32, dim3(1), B256, dx.data(), 0.0f, n);
        launch(scatter_add_f32, dim3(2), B256, (const float*)dy.data(), (const int*)map.data(), dx.data(), m);
        check_close("scatter_add_f32 many-to-one", dx, want, 1e-5, 1e-6 * max_abs(mag));
    }
    // A permutation (the gradient of a transpose): every dx element written once, exactly.
    {
        const i64 m = 600;
        vector<float> dy = rand_vec(m, -1, 1), dx(m, 123.0f);
        vector<int> map(m);
        std::iota(map.begin(), map.end(), 1);
        std::shuffle(map.begin(), map.end(), rng);
        vector<double> want(m);
        for (i64 i = 0; i < m; ++i) want[map[i] - 1] = dy[i];
        set_current("scatter_add_f32 permutation");
        launch(fill_f32, dim3(2), B256, dx.data(), 0.0f, m);
        launch(scatter_add_f32, dim3(2), B256, (const float*)dy.data(), (const int*)map.data(), dx.data(), m);
        check_close("scatter_add_f32 permutation", dx, want, 0, 0);
    }
}

void test_fill() {
    const i64 rows = 40, cols = 15;
    vector<float> b = rand_vec(cols, -2, 2), y(rows * cols, 7);
    vector<double> want(rows * cols);
    for (i64 i = 0; i < rows * cols; ++i) want[i] = b[i % cols];
    set_current("fill_rows_f32");
    launch(fill_rows_f32, dim3(2), B256, b.data(), y.data(), rows, cols);
    check_close("fill_rows_f32", y, want, 0, 0);
    vector<float> z(700, 1);
    set_current("fill_f32");
    launch(fill_f32, dim3(2), B256, z.data(), -3.25f, (i64)700);
    check_close("fill_f32", z, vector<double>(700, -3.25), 0, 0);
    // The guarded copy: every byte with the flag clear (a partial last block), none with it set.
    vector<unsigned char> src(1000), dst(1000, 9), none(1000, 9);
    for (size_t i = 0; i < src.size(); ++i) src[i] = (unsigned char)(i * 7 + 1);
    i64 clear = 0, set = 2;
    set_current("copy_unless_flagged");
    launch(copy_unless_flagged, dim3(3), B256, src.data(), dst.data(), (i64)1000, &clear);
    check_equal("copy_unless_flagged with no error flagged", dst, src);
    launch(copy_unless_flagged, dim3(3), B256, src.data(), none.data(), (i64)1000, &set);
    check_equal("copy_unless_flagged after an error", none, vector<unsigned char>(1000, 9));
}

// ---------------------------------------------------------------- reductions

// reduce_dims of cuda/ops/reduce.rs: the keep and red layouts of reducing `shape` over the
// dims flagged in `reduced`.
struct ReducePlan {
    Layout keep, red;
    i64 nout, nred;
    Shape kept;
};

ReducePlan reduce_plan(const Shape& shape, const vector<bool>& reduced, bool merge) {
    Shape own = contiguous(shape), kept, kst, rshape;
    for (size_t d = 0; d < shape.size(); ++d) {
        kept.push_back(reduced[d] ? 1 : shape[d]);
        kst.push_back(reduced[d] ? 0 : own[d]);
        rshape.push_back(reduced[d] ? shape[d] : 1);
    }
    ReducePlan p;
    p.keep = make_layout(kept, {kst, contiguous(kept)}, merge);
    p.red = make_layout(rshape, {own}, merge);
    p.nout = numel(kept);
    p.nred = numel(rshape);
    p.kept = kept;
    return p;
}

void reduce_case(const string& label, const Shape& shape, const vector<bool>& reduced, bool with_nan, bool merge,
                 unsigned grid_override) {
    const char* kinds[] = {"sum", "max", "min", "sumsq", "mean"};
    i64 n = numel(shape);
    ReducePlan p = reduce_plan(shape, reduced, merge);
    for (int kk = 0; kk <= 4; ++kk) {
        int kind = kk == 4 ? 0 : kk;
        float scale = kk == 4 ? 1.0f / (float)p.nred : 1.0f;
        vector<float> x = rand_vec(n, -2, 2);
        if (with_nan) x[n / 3] = NaNf;
        vector<float> y(p.nout, 777.0f);
        vector<double> want(p.nout, 0.0), mag(p.nout, 0.0);
        vector<bool> started(p.nout, false);
        Shape kept_st = contiguous(p.kept);
        for (i64 i = 0; i < n; ++i) {
            Shape idx = unravel(i, shape);
            for (size_t d = 0; d < shape.size(); ++d)
                if (reduced[d]) idx[d] = 0;
            i64 o = dot(idx, kept_st);
            double v = x[i];
            double& w = want[o];
            if (!started[o]) {
                started[o] = true;
                w = kind == 0 || kind == 3 ? 0.0 : kind == 1 ? -Inf : Inf;
            }
            if (kind == 0) w += v, mag[o] += std::fabs(v);
            else if (kind == 3) w += v * v, mag[o] += v * v;
            else if (std::isnan(v) || std::isnan(w)) w = NaN;
            else w = kind == 1 ? std::max(w, v) : std::min(w, v);
        }
        for (i64 o = 0; o < p.nout; ++o) want[o] *= (double)scale;
        unsigned grid = grid_override ? grid_override : (unsigned)p.nout;  // per_row(nout)
        string name = "reduce_f32 " + string(kinds[kk]) + " " + label + (merge ? "" : " unmerged") +
                      (grid_override ? " grid " + std::to_string(grid) : "");
        set_current(name);
        launch(reduce_f32, dim3(grid), B256, kind, p.keep, p.red, (const float*)x.data(), y.data(), p.nout, p.nred,
               scale);
        // Sums: error relative to Σ|x| (cancellation), not to the result.
        bool ok = true;
        size_t first = 0;
        for (i64 o = 0; o < p.nout && ok; ++o) {
            double atol = 1e-6 * mag[o] * (double)scale + 1e-7;
            if (!near(y[o], want[o], 1e-5, atol)) ok = false, first = (size_t)o;
        }
        if (ok) {
            report(true, name);
        } else {
            std::ostringstream os;
            os.precision(9);
            os << "output [" << first << "]: expected " << want[first] << ", got " << y[first];
            report(false, name, os.str());
        }
    }
}

void test_reduce() {
    // (a) trailing dims reduced.
    reduce_case("[3,4,5] over (1,2)", {3, 4, 5}, {false, true, true}, false, true, 0);
    // (b) a middle dim reduced.
    reduce_case("[2,4,3] over (1)", {2, 4, 3}, {false, true, false}, false, true, 0);
    reduce_case("[2,4,3] over (1)", {2, 4, 3}, {false, true, false}, false, false, 0);
    // Leading dim (the reduce_f32 path when not Sum or fewer than 32 outputs), and two
    // non-adjacent dims.
    reduce_case("[4,2,3] over (0)", {4, 2, 3}, {true, false, false}, false, true, 0);
    reduce_case("[3,2,5,3] over (0,2)", {3, 2, 5, 3}, {true, false, true, false}, false, true, 0);
    // More reduced elements than threads; all dims; fewer blocks than outputs.
    reduce_case("[2,700] over (1)", {2, 700}, {false, true}, false, true, 0);
    reduce_case("[4,3,50] over all", {4, 3, 50}, {true, true, true}, false, true, 0);
    reduce_case("[5,4,2] over (1)", {5, 4, 2}, {false, true, false}, false, true, 3);
    // A NaN propagates through max and min (and sums).
    reduce_case("[3,4,5] over (1,2) with NaN", {3, 4, 5}, {false, true, true}, true, true, 0);
    reduce_case("[2,4,3] over (1) with NaN", {2, 4, 3}, {false, true, false}, true, true, 0);
    // Max of −∞ only, and of a row holding −∞ and +∞.
    {
        vector<float> x = {-Inff, -Inff, -Inff, Inff, -Inff, 1.0f};
        ReducePlan p = reduce_plan({2, 3}, {false, true}, true);
        vector<float> y(2);
        set_current("reduce_f32 max of infinities");
        launch(reduce_f32, dim3(2), B256, 1, p.keep, p.red, (const float*)x.data(), y.data(), p.nout, p.nred, 1.0f);
        check_close("reduce_f32 max of infinities", y, {-Inf, Inf}, 0, 0);
    }
}

void test_colsum() {
    struct Case {
        i64 rows, cols;
    };
    for (Case cs : {Case{37, 45}, Case{3, 70}, Case{100, 33}}) {
        vector<float> x = rand_vec(cs.rows * cs.cols, -2, 2), y(cs.cols + 5, 555.0f);
        float scale = 0.5f;
        vector<double> want(cs.cols + 5, 555.0), mag(cs.cols, 0);
        for (i64 c = 0; c < cs.cols; ++c) {
            double s = 0;
            for (i64 r = 0; r < cs.rows; ++r) s += x[r * cs.cols + c], mag[c] += std::fabs(x[r * cs.cols + c]);
            want[c] = s * scale;
        }
        string name = "colsum_f32 " + std::to_string(cs.rows) + "x" + std::to_string(cs.cols);
        set_current(name);
        unsigned grid = (unsigned)((cs.cols + 31) / 32);
        launch(colsum_f32, dim3(grid), dim3(32, 8), (const float*)x.data(), y.data(), cs.rows, cs.cols, scale);
        check_close(name, y, want, 1e-5, 1e-6 * max_abs(vector<double>(mag.begin(), mag.end())));
    }
}

// ---------------------------------------------------------------- softmax

vector<double> softmax_ref(const vector<float>& x, i64 rows, i64 cols, bool log) {
    vector<double> y(rows * cols);
    for (i64 r = 0; r < rows; ++r) {
        double m = -Inf;
        for (i64 c = 0; c < cols; ++c) m = std::max(m, (double)x[r * cols + c]);
        double s = 0;
        for (i64 c = 0; c < cols; ++c) s += std::exp(x[r * cols + c] - m);
        for (i64 c = 0; c < cols; ++c) {
            double v = x[r * cols + c] - m;  // NaN for a row of −∞
            y[r * cols + c] = log ? v - std::log(s) : std::exp(v) / s;
        }
    }
    return y;
}

void test_softmax() {
    struct Case {
        i64 rows, cols;
        unsigned grid;
    };
    for (Case cs : {Case{5, 300, 5}, Case{6, 7, 6}, Case{7, 40, 3}}) {
        for (int log = 0; log <= 1; ++log) {
            vector<float> x = rand_vec(cs.rows * cs.cols, -5, 5);
            // Row 1: fully masked (NaN out, as on the CPU); row 2: partly masked; row 3 holds
            // a NaN (the whole row is NaN, as on the CPU).
            for (i64 c = 0; c < cs.cols; ++c) x[1 * cs.cols + c] = -Inff;
            for (i64 c = 0; c < cs.cols; c += 2) x[2 * cs.cols + c] = -Inff;
            x[3 * cs.cols + cs.cols / 2] = NaNf;
            vector<float> y(cs.rows * cs.cols, 3.0f);
            string name = string(log ? "softmax_f32 log " : "softmax_f32 ") + std::to_string(cs.rows) + "x" +
                          std::to_string(cs.cols) + " grid " + std::to_string(cs.grid);
            set_current(name);
            launch(softmax_f32, dim3(cs.grid), B256, (const float*)x.data(), y.data(), cs.rows, cs.cols, log);
            check_close(name, y, softmax_ref(x, cs.rows, cs.cols, log), 1e-5, log ? 1e-5 : 1e-7);
        }
    }
    // SoftmaxGrad: dx = y·(dy − Σ dy·y).
    for (Case cs : {Case{4, 300, 4}, Case{5, 33, 2}}) {
        vector<float> x = rand_vec(cs.rows * cs.cols, -3, 3), dy = rand_vec(cs.rows * cs.cols, -1, 1);
        vector<double> yd = softmax_ref(x, cs.rows, cs.cols, false);
        vector<float> y(yd.begin(), yd.end()), dx(cs.rows * cs.cols, 3.0f);
        vector<double> want(cs.rows * cs.cols);
        for (i64 r = 0; r < cs.rows; ++r) {
            double s = 0;
            for (i64 c = 0; c < cs.cols; ++c) s += (double)dy[r * cs.cols + c] * y[r * cs.cols + c];
            for (i64 c = 0; c < cs.cols; ++c) want[r * cs.cols + c] = (double)y[r * cs.cols + c] * (dy[r * cs.cols + c] - s);
        }
        string name = "softmax_grad_f32 " + std::to_string(cs.rows) + "x" + std::to_string(cs.cols) + " grid " +
                      std::to_string(cs.grid);
        set_current(name);
        launch(softmax_grad_f32, dim3(cs.grid), B256, (const float*)dy.data(), (const float*)y.data(), dx.data(),
               cs.rows, cs.cols);
        check_close(name, dx, want, 1e-5, 1e-6 * max_abs(want));
    }
}

// ---------------------------------------------------------------- fused attention

// The backend's blocked pipeline (runtime/src/cuda/ops/attention.rs) replayed step by step:
// its GEMMs by `emu_gemm` (what `run_gemm` asks cuBLAS for: row-major, batched, with the same
// dims, transposes, strides and beta), its kernels the real ones. The results are checked
// against a double-precision reference of the whole op computed without blocks, whose
// gradients are themselves checked against central differences.

// C[t] = op(A[t])·op(B[t]) (+ beta·C[t]) for t < batch, op(A) [m, k] (stored [k, m] when ta),
// op(B) [k, n] (stored [n, k] when tb), C rows of n; accumulated in double, stored as f32.
// beta = 0 never reads C (cuBLAS's rule), so it may hold garbage.
struct Gemm {
    i64 m, n, k;
    bool ta, tb;
    i64 batch, sa, sb, sc;
    float beta;
};

void emu_gemm(const Gemm& g, const float* A, const float* B, float* C) {
    for (i64 t = 0; t < g.batch; ++t)
        for (i64 i = 0; i < g.m; ++i)
            for (i64 j = 0; j < g.n; ++j) {
                double acc = 0;
                for (i64 l = 0; l < g.k; ++l) {
                    double x = g.ta ? A[t * g.sa + l * g.m + i] : A[t * g.sa + i * g.k + l];
                    double y = g.tb ? B[t * g.sb + j * g.k + l] : B[t * g.sb + l * g.n + j];
                    acc += x * y;
                }
                float& c = C[t * g.sc + i * g.n + j];
                c = (float)(g.beta != 0.0f ? acc + (double)g.beta * c : acc);
            }
}

struct Attn {
    string name;
    i64 B, H, M, K, N, Dv;
    Shape bias_shape;  // empty: no bias
    int zero;          // masked_rows_zero
    i64 rows;          // query rows per block (the backend's block_rows)
    unsigned grid_cap; // most blocks per launch (per_row's grid, or fewer for grid-stride)
    vector<float> a, b, v, bias, dy;
    i64 P() const { return B * H; }
    Shape scores() const { return {B, H, M, N}; }
};

// The bias element of product p, row i, column j (0 without a bias), by full broadcasting.
double attn_bias_at(const Attn& c, i64 p, i64 i, i64 j) {
    if (c.bias_shape.empty()) return 0;
    Shape st = broadcast(c.bias_shape, c.scores());
    return c.bias[dot({p / c.H, p % c.H, i, j}, st)];
}

struct AttnRef {
    vector<double> y, lse, da, db, dv;
};

// softmax(a·b + bias)·v and its gradients for the output gradient dy, in double, unblocked.
AttnRef attn_reference(const Attn& c, const vector<double>& a, const vector<double>& b, const vector<double>& v,
                       bool grads) {
    const i64 P = c.P(), M = c.M, K = c.K, N = c.N, Dv = c.Dv;
    AttnRef r{vector<double>(P * M * Dv), vector<double>(P * M), vector<double>(P * M * K, 0),
              vector<double>(P * K * N, 0), vector<double>(P * N * Dv, 0)};
    vector<double> pr(N), ds(N);
    for (i64 p = 0; p < P; ++p)
        for (i64 i = 0; i < M; ++i) {
            double mx = -Inf;
            for (i64 j = 0; j < N; ++j) {
                double s = attn_bias_at(c, p, i, j);
                for (i64 l = 0; l < K; ++l) s += a[(p * M + i) * K + l] * b[(p * K + l) * N + j];
                pr[j] = s;
                mx = std::max(mx, s);
            }
            double lse = -Inf;
            if (mx != -Inf) {
                double sum = 0;
                for (i64 j = 0; j < N; ++j) sum += std::exp(pr[j] - mx);
                lse = mx + std::log(sum);
            }
            r.lse[p * M + i] = lse;
            for (i64 j = 0; j < N; ++j) pr[j] = lse == -Inf ? (c.zero ? 0.0 : NaN) : std::exp(pr[j] - lse);
            const double* yr = nullptr;
            for (i64 d = 0; d < Dv; ++d) {
                double s = 0;
                for (i64 j = 0; j < N; ++j) s += pr[j] * v[(p * N + j) * Dv + d];
                r.y[(p * M + i) * Dv + d] = s;
            }
            yr = &r.y[(p * M + i) * Dv];
            if (!grads) continue;
            const float* dyr = &c.dy[(p * M + i) * Dv];
            double delta = 0;
            for (i64 d = 0; d < Dv; ++d) delta += (double)dyr[d] * yr[d];
            for (i64 j = 0; j < N; ++j) {
                double dp = 0;
                for (i64 d = 0; d < Dv; ++d) dp += (double)dyr[d] * v[(p * N + j) * Dv + d];
                ds[j] = pr[j] * (dp - delta);
            }
            for (i64 l = 0; l < K; ++l) {
                double s = 0;
                for (i64 j = 0; j < N; ++j) s += ds[j] * b[(p * K + l) * N + j];
                r.da[(p * M + i) * K + l] = s;
                for (i64 j = 0; j < N; ++j) r.db[(p * K + l) * N + j] += a[(p * M + i) * K + l] * ds[j];
            }
            for (i64 j = 0; j < N; ++j)
                for (i64 d = 0; d < Dv; ++d) r.dv[(p * N + j) * Dv + d] += pr[j] * dyr[d];
        }
    return r;
}

// The bias arguments the backend passes: address, batch layout (Layout::new over [B, H]), row
// and column strides.
std::tuple<const float*, Layout, i64, i64> attn_bias_args(const Attn& c) {
    if (c.bias_shape.empty()) return {nullptr, Layout{}, 0, 0};
    Shape st = broadcast(c.bias_shape, c.scores());
    return {c.bias.data(), make_layout({c.B, c.H}, {Shape{st[0], st[1]}}), st[2], st[3]};
}

// softmax_attention's loop: y [P, M, Dv] and lse [P, M].
std::pair<vector<float>, vector<float>> attn_forward_emu(const Attn& c) {
    const i64 P = c.P(), M = c.M, K = c.K, N = c.N, Dv = c.Dv;
    vector<float> y(P * M * Dv, 5.0f), lse(P * M, 5.0f), s(P * c.rows * N, 7.0f);
    auto [bias, bl, brs, bcs] = attn_bias_args(c);
    for (i64 r0 = 0; r0 < M; r0 += c.rows) {
        i64 r = std::min(c.rows, M - r0);
        emu_gemm({r, N, K, false, false, P, M * K, K * N, r * N, 0.0f}, c.a.data() + r0 * K, c.b.data(), s.data());
        unsigned grid = (unsigned)std::min<i64>(P * r, c.grid_cap);
        launch(attn_probs_f32, dim3(grid), B256, s.data(), bias, bl, brs, bcs, lse.data(), P, r, M, r0, N, c.zero);
        emu_gemm({r, Dv, N, false, false, P, r * N, N * Dv, M * Dv, 0.0f}, s.data(), c.v.data(), y.data() + r0 * Dv);
    }
    return {y, lse};
}

// softmax_attention_grad's loop, from the forward's y and lse: (da, db, dv).
std::tuple<vector<float>, vector<float>, vector<float>> attn_backward_emu(const Attn& c, const vector<float>& y,
                                                                          const vector<float>& lse) {
    const i64 P = c.P(), M = c.M, K = c.K, N = c.N, Dv = c.Dv;
    // Garbage in the outputs: the first block must write db and dv without reading them.
    vector<float> da(P * M * K, 5.0f), db(P * K * N, NaNf), dv(P * N * Dv, NaNf);
    vector<float> s(P * c.rows * N, 7.0f), dp(P * c.rows * N, 7.0f);
    auto [bias, bl, brs, bcs] = attn_bias_args(c);
    for (i64 r0 = 0; r0 < M; r0 += c.rows) {
        i64 r = std::min(c.rows, M - r0);
        emu_gemm({r, N, K, false, false, P, M * K, K * N, r * N, 0.0f}, c.a.data() + r0 * K, c.b.data(), s.data());
        emu_gemm({r, N, Dv, false, true, P, M * Dv, N * Dv, r * N, 0.0f}, c.dy.data() + r0 * Dv, c.v.data(),
                 dp.data());
        unsigned grid = (unsigned)std::min<i64>(P * r, c.grid_cap);
        launch(attn_grad_probs_f32, dim3(grid), B256, s.data(), dp.data(), bias, bl, brs, bcs, (const float*)lse.data(),
               (const float*)y.data(), (const float*)c.dy.data(), P, r, M, r0, N, Dv, c.zero);
        float beta = r0 == 0 ? 0.0f : 1.0f;
        emu_gemm({r, K, N, false, true, P, r * N, K * N, M * K, 0.0f}, dp.data(), c.b.data(), da.data() + r0 * K);
        emu_gemm({K, N, r, true, false, P, M * K, r * N, K * N, beta}, c.a.data() + r0 * K, dp.data(), db.data());
        emu_gemm({N, Dv, r, true, false, P, r * N, M * Dv, N * Dv, beta}, s.data(), c.dy.data() + r0 * Dv, dv.data());
    }
    return {da, db, dv};
}

Attn make_attn(string name, Shape dims, Shape bias_shape, int zero, i64 rows, unsigned grid_cap) {
    Attn c{name, dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], bias_shape, zero, rows, grid_cap};
    c.a = rand_vec(c.P() * c.M * c.K, -1.5, 1.5);
    c.b = rand_vec(c.P() * c.K * c.N, -1.5, 1.5);
    c.v = rand_vec(c.P() * c.N * c.Dv, -1, 1);
    c.dy = rand_vec(c.P() * c.M * c.Dv, -1, 1);
    if (!bias_shape.empty()) c.bias = rand_vec(numel(bias_shape), -2, 2);
    return c;
}

// Runs both loops and checks them against the reference; with `fd`, checks the reference's
// gradients against central differences of Σ y ⊙ dy first.
void attn_case(const Attn& c, bool fd) {
    string tag = c.name + " P" + std::to_string(c.P()) + " M" + std::to_string(c.M) + " K" + std::to_string(c.K) +
                 " N" + std::to_string(c.N) + " Dv" + std::to_string(c.Dv) + " bias " +
                 (c.bias_shape.empty() ? string("none") : shape_str(c.bias_shape)) + " zero " +
                 std::to_string(c.zero) + " rows " + std::to_string(c.rows) + " grid≤" + std::to_string(c.grid_cap);
    vector<double> a = to_d(c.a), b = to_d(c.b), v = to_d(c.v);
    AttnRef ref = attn_reference(c, a, b, v, true);
    if (fd) {
        set_current("attention reference vs finite differences " + tag);
        auto loss = [&](const vector<double>& a2, const vector<double>& b2, const vector<double>& v2) {
            AttnRef f = attn_reference(c, a2, b2, v2, false);
            double s = 0;
            for (size_t t = 0; t < f.y.size(); ++t) s += f.y[t] * c.dy[t];
            return s;
        };
        const double h = 1e-6;
        double worst = 0;
        for (int w = 0; w < 3; ++w) {
            vector<double>& x = w == 0 ? a : w == 1 ? b : v;
            const vector<double>& g = w == 0 ? ref.da : w == 1 ? ref.db : ref.dv;
            for (size_t t = 0; t < x.size(); t += 7) {
                double keep = x[t];
                x[t] = keep + h;
                double up = loss(a, b, v);
                x[t] = keep - h;
                double down = loss(a, b, v);
                x[t] = keep;
                worst = std::max(worst, std::fabs((up - down) / (2 * h) - g[t]) / (1e-3 + std::fabs(g[t])));
            }
        }
        check_true("attention reference vs finite differences " + tag, worst < 1e-5,
                   "worst relative difference " + std::to_string(worst));
    }
    set_current("attn_probs_f32 " + tag);
    auto [y, lse] = attn_forward_emu(c);
    check_close("attn_probs_f32 y " + tag, y, ref.y, 2e-5, 1e-6 * max_abs(ref.y));
    check_close("attn_probs_f32 lse " + tag, lse, ref.lse, 1e-6, 1e-5);
    // The backward reads the reference's y and lse (rounded to f32), not the emulated ones.
    set_current("attn_grad_probs_f32 " + tag);
    vector<float> yf(ref.y.begin(), ref.y.end()), lf(ref.lse.begin(), ref.lse.end());
    auto [da, db, dv] = attn_backward_emu(c, yf, lf);
    check_close("attn_grad_probs_f32 da " + tag, da, ref.da, 1e-4, 1e-5 * max_abs(ref.da));
    check_close("attn_grad_probs_f32 db " + tag, db, ref.db, 1e-4, 1e-5 * max_abs(ref.db));
    check_close("attn_grad_probs_f32 dv " + tag, dv, ref.dv, 1e-4, 1e-5 * max_abs(ref.dv));
}

void test_attention() {
    // Several blocks with a partial last one (3, 3, 1), a padding mask [B, 1, 1, N] with masked
    // keys in batch entry 1; the exact grid (one block per row) and a smaller one.
    for (unsigned grid : {1u << 16, 4u}) {
        Attn c = make_attn("padding mask", {2, 3, 7, 5, 9, 4}, {2, 1, 1, 9}, 1, 3, grid);
        for (i64 j = 6; j < 9; ++j) c.bias[1 * 9 + j] = -Inff;
        attn_case(c, grid == 4u);
    }
    // A per-row mask [B, 1, M, N] with fully masked rows (row 2 of batch entry 1 for every head,
    // row 4 of batch entry 0), blocks of 2 over 5 rows: zeros or NaN (masked_rows_zero 1 / 0).
    for (int zero : {1, 0}) {
        Attn c = make_attn("masked rows", {2, 2, 5, 3, 6, 5}, {2, 1, 5, 6}, zero, 2, 1u << 16);
        for (i64 j = 0; j < 6; ++j) c.bias[(1 * 5 + 2) * 6 + j] = -Inff, c.bias[(0 * 5 + 4) * 6 + j] = -Inff;
        c.bias[(0 * 5 + 1) * 6 + 3] = -Inff;  // one masked key elsewhere
        attn_case(c, false);
    }
    // A causal mask [M, N] shared by every product (row 0 sees one key), one block of every row;
    // rows longer than the block (N 300) and a Dv over 256 for the δ reduction.
    {
        Attn c = make_attn("causal", {1, 2, 6, 4, 300, 260}, {6, 300}, 0, 6, 5);
        for (i64 i = 0; i < 6; ++i)
            for (i64 j = i + 1; j < 300; ++j) c.bias[i * 300 + j] = -Inff;
        attn_case(c, false);
    }
    // No bias, one row per block; a full bias [B, H, M, N] in blocks of 4 over 9 rows; a bias
    // per row [B, 1, M, 1] (column stride 0: it cancels in y but not in lse, nor in the
    // probabilities the backward rebuilds).
    attn_case(make_attn("no bias", {3, 1, 4, 6, 10, 3}, {}, 0, 1, 2), true);
    attn_case(make_attn("full bias", {2, 2, 9, 8, 12, 6}, {2, 2, 9, 12}, 1, 4, 1u << 16), false);
    attn_case(make_attn("row bias", {2, 3, 5, 4, 7, 3}, {2, 1, 5, 1}, 0, 2, 1u << 16), true);
}


// ---------------------------------------------------------------- flash attention

// The flash kernels (products on bf16 tensor cores, through the shim's mma) against the double
// reference on operands rounded to bf16 as the kernels round them. What the reference does not
// round — the forward's unnormalised probabilities and the backward's P and dS before their
// products — bounds the tolerances: 2⁻⁹ relative per product term, so 1% of the output's
// largest value (a wrong fragment, tile edge or rescale is off by O(1)). lse sums exact bf16
// products in f32: 1e-5.
void flash_case(Attn c, unsigned grid) {
    const i64 P = c.P(), M = c.M, N = c.N, D = c.K;
    string tag = c.name + " P" + std::to_string(P) + " M" + std::to_string(M) + " N" + std::to_string(N) + " D" +
                 std::to_string(D) + " bias " + (c.bias_shape.empty() ? string("none") : shape_str(c.bias_shape)) +
                 " zero " + std::to_string(c.zero) + " grid " + std::to_string(grid);
    Attn r = c;
    for (vector<float>* x : {&r.a, &r.b, &r.v, &r.dy})
        for (float& e : *x) e = (float)bf16_round(e);
    AttnRef ref = attn_reference(r, to_d(r.a), to_d(r.b), to_d(r.v), true);
    auto [bias, bl, brs, bcs] = attn_bias_args(c);
    auto fwd = D == 32 ? flash_attn_fwd_d32 : flash_attn_fwd_d64;
    auto bda = D == 32 ? flash_attn_bwd_da_d32 : flash_attn_bwd_da_d64;
    auto bdbv = D == 32 ? flash_attn_bwd_dbv_d32 : flash_attn_bwd_dbv_d64;
    const dim3 block(128);
    set_current("flash_attn_fwd " + tag);
    vector<float> y(P * M * D, 5.0f), lse(P * M, 5.0f);
    launch(fwd, dim3(grid), block, (const float*)c.a.data(), (const float*)c.b.data(), (const float*)c.v.data(), bias,
           bl, brs, bcs, y.data(), lse.data(), P, M, N, c.zero);
    check_close("flash_attn_fwd y " + tag, y, ref.y, 0, 1e-2 * max_abs(ref.y));
    check_close("flash_attn_fwd lse " + tag, lse, ref.lse, 1e-5, 1e-5);
    // The backward from the reference's y and lse, as f32.
    vector<float> yf(ref.y.begin(), ref.y.end()), lf(ref.lse.begin(), ref.lse.end());
    set_current("attn_row_dot_f32 " + tag);
    vector<float> delta(P * M, 5.0f);
    launch(attn_row_dot_f32, dim3(std::min<unsigned>(grid, 3)), B256, (const float*)c.dy.data(),
           (const float*)yf.data(), delta.data(), P * M, D);
    vector<double> wd(P * M);
    for (i64 i = 0; i < P * M; ++i)
        for (i64 d = 0; d < D; ++d) wd[i] += (double)c.dy[i * D + d] * yf[i * D + d];
    check_close("attn_row_dot_f32 " + tag, delta, wd, 1e-5, 1e-6);
    set_current("flash_attn_bwd " + tag);
    vector<float> da(P * M * D, 5.0f), db(P * D * N, 5.0f), dv(P * N * D, 5.0f);
    launch(bda, dim3(grid), block, (const float*)c.a.data(), (const float*)c.b.data(), (const float*)c.v.data(), bias,
           bl, brs, bcs, (const float*)lf.data(), (const float*)delta.data(), (const float*)c.dy.data(), da.data(), P,
           M, N, c.zero);
    launch(bdbv, dim3(grid), block, (const float*)c.a.data(), (const float*)c.b.data(), (const float*)c.v.data(), bias,
           bl, brs, bcs, (const float*)lf.data(), (const float*)delta.data(), (const float*)c.dy.data(), db.data(),
           dv.data(), P, M, N, c.zero);
    check_close("flash_attn_bwd da " + tag, da, ref.da, 0, 1e-2 * max_abs(ref.da));
    check_close("flash_attn_bwd db " + tag, db, ref.db, 0, 1e-2 * max_abs(ref.db));
    check_close("flash_attn_bwd dv " + tag, dv, ref.dv, 0, 1e-2 * max_abs(ref.dv));

    // Operands stored as bf16 (`_bf16` kernels): the f32 kernels' results on the same values
    // widened, bit for bit (the f32 kernels round their operands to these very bits).
    set_current("flash_attn bf16 operands " + tag);
    auto bits = [](const vector<float>& x) {
        vector<bf16_t> h(x.size());
        for (size_t k = 0; k < x.size(); ++k) h[k] = f32_to_bf16(x[k]);
        return h;
    };
    vector<bf16_t> ah = bits(r.a), bh = bits(r.b), vh = bits(r.v), dyh = bits(r.dy);
    // Compared as bits: fully masked rows are NaN without the zero guard.
    auto same = [](const string& name, const vector<float>& got, const vector<float>& want) {
        vector<uint32_t> g(got.size()), w(want.size());
        std::memcpy(g.data(), got.data(), got.size() * 4);
        std::memcpy(w.data(), want.data(), want.size() * 4);
        check_equal(name, g, w);
    };
    auto fwd16 = D == 32 ? flash_attn_fwd_d32_bf16 : flash_attn_fwd_d64_bf16;
    auto bda16 = D == 32 ? flash_attn_bwd_da_d32_bf16 : flash_attn_bwd_da_d64_bf16;
    auto bdbv16 = D == 32 ? flash_attn_bwd_dbv_d32_bf16 : flash_attn_bwd_dbv_d64_bf16;
    vector<float> y32(P * M * D, 5.0f), l32(P * M, 5.0f), y16(P * M * D, 6.0f), l16(P * M, 6.0f);
    launch(fwd, dim3(grid), block, (const float*)r.a.data(), (const float*)r.b.data(), (const float*)r.v.data(), bias,
           bl, brs, bcs, y32.data(), l32.data(), P, M, N, c.zero);
    launch(fwd16, dim3(grid), block, (const bf16_t*)ah.data(), (const bf16_t*)bh.data(), (const bf16_t*)vh.data(),
           bias, bl, brs, bcs, y16.data(), l16.data(), P, M, N, c.zero);
    same("flash_attn_fwd_bf16 y = f32 kernel on widened operands " + tag, y16, y32);
    same("flash_attn_fwd_bf16 lse " + tag, l16, l32);
    vector<float> d32(P * M, 5.0f), d16(P * M, 6.0f);
    launch(attn_row_dot_f32, dim3(std::min<unsigned>(grid, 3)), B256, (const float*)r.dy.data(),
           (const float*)yf.data(), d32.data(), P * M, D);
    launch(attn_row_dot_bf16, dim3(std::min<unsigned>(grid, 3)), B256, (const bf16_t*)dyh.data(),
           (const float*)yf.data(), d16.data(), P * M, D);
    same("attn_row_dot_bf16 = f32 kernel on widened dy " + tag, d16, d32);
    vector<float> da32(P * M * D, 5.0f), db32(P * D * N, 5.0f), dv32(P * N * D, 5.0f);
    vector<float> da16(P * M * D, 6.0f), db16(P * D * N, 6.0f), dv16(P * N * D, 6.0f);
    launch(bda, dim3(grid), block, (const float*)r.a.data(), (const float*)r.b.data(), (const float*)r.v.data(), bias,
           bl, brs, bcs, (const float*)lf.data(), (const float*)d32.data(), (const float*)r.dy.data(), da32.data(), P,
           M, N, c.zero);
    launch(bdbv, dim3(grid), block, (const float*)r.a.data(), (const float*)r.b.data(), (const float*)r.v.data(),
           bias, bl, brs, bcs, (const float*)lf.data(), (const float*)d32.data(), (const float*)r.dy.data(),
           db32.data(), dv32.data(), P, M, N, c.zero);
    launch(bda16, dim3(grid), block, (const bf16_t*)ah.data(), (const bf16_t*)bh.data(), (const bf16_t*)vh.data(),
           bias, bl, brs, bcs, (const float*)lf.data(), (const float*)d16.data(), (const bf16_t*)dyh.data(),
           da16.data(), P, M, N, c.zero);
    launch(bdbv16, dim3(grid), block, (const bf16_t*)ah.data(), (const bf16_t*)bh.data(), (const bf16_t*)vh.data(),
           bias, bl, brs, bcs, (const float*)lf.data(), (const float*)d16.data(), (const bf16_t*)dyh.data(),
           db16.data(), dv16.data(), P, M, N, c.zero);
    same("flash_attn_bwd_da_bf16 = f32 kernel on widened operands " + tag, da16, da32);
    same("flash_attn_bwd_dbv_bf16 db " + tag, db16, db32);
    same("flash_attn_bwd_dbv_bf16 dv " + tag, dv16, dv32);
}

// The shim's mma against a plain 16×16·16×8 product of the fragments' matrices: the layout
// the kernels and the PTX ISA agree on.
void test_mma_layout() {
    set_current("mma_bf16_16816 layout");
    vector<float> A = rand_vec(16 * 16, -2, 2), Bm = rand_vec(16 * 8, -2, 2), C = rand_vec(16 * 8, -1, 1);
    for (float& x : A) x = (float)bf16_round(x);
    for (float& x : Bm) x = (float)bf16_round(x);
    vector<float> out(16 * 8, 0.0f);
    auto kernel = [](const float* A, const float* Bm, const float* C, float* out) {
        int lane = (int)threadIdx.x, g = lane / 4, t = lane % 4;
        unsigned a[4], b[2];
        for (int q = 0; q < 4; ++q) {
            int r = g + (q & 1) * 8, k = 2 * t + (q >> 1) * 8;
            a[q] = pack_bf16(A[r * 16 + k], A[r * 16 + k + 1]);
        }
        for (int q = 0; q < 2; ++q) b[q] = pack_bf16(Bm[(2 * t + q * 8) * 8 + g], Bm[(2 * t + q * 8 + 1) * 8 + g]);
        float c[4];
        for (int e = 0; e < 4; ++e) c[e] = C[(g + (e >> 1) * 8) * 8 + 2 * t + (e & 1)];
        mma_bf16_16816(c, a, b);
        for (int e = 0; e < 4; ++e) out[(g + (e >> 1) * 8) * 8 + 2 * t + (e & 1)] = c[e];
    };
    void (*kp)(const float*, const float*, const float*, float*) = kernel;
    launch(kp, dim3(1), dim3(32), (const float*)A.data(), (const float*)Bm.data(), (const float*)C.data(), out.data());
    vector<double> want(16 * 8);
    for (int r = 0; r < 16; ++r)
        for (int n = 0; n < 8; ++n) {
            double s = C[r * 8 + n];
            for (int k = 0; k < 16; ++k) s += (double)A[r * 16 + k] * Bm[k * 8 + n];
            want[r * 8 + n] = s;
        }
    check_close("mma_bf16_16816 layout", out, want, 1e-6, 1e-6);
}

void test_flash_attention() {
    test_mma_layout();
    for (i64 D : {32, 64}) {
        // Several query and key tiles with partial last ones, a padding mask with masked keys
        // in batch entry 1, the grid smaller than the tiles (grid-stride) and one per tile.
        for (unsigned grid : {3u, 64u}) {
            Attn c = make_attn("flash padding", {2, 2, 100, D, 150, D}, {2, 1, 1, 150}, 1, 1, grid);
            for (i64 j = 120; j < 150; ++j) c.bias[150 + j] = -Inff;
            flash_case(c, grid);
        }
        // A causal mask [M, N] (whole tiles masked: the skip), no bias, a full bias.
        Attn causal = make_attn("flash causal", {1, 2, 130, D, 130, D}, {130, 130}, 0, 1, 8);
        for (i64 i = 0; i < 130; ++i)
            for (i64 j = 0; j < 130; ++j) causal.bias[i * 130 + j] = j > i ? -Inff : 0.0f;
        flash_case(causal, 8);
        flash_case(make_attn("flash no bias", {1, 3, 70, D, 90, D}, {}, 0, 1, 8), 8);
        flash_case(make_attn("flash full bias", {2, 1, 40, D, 70, D}, {2, 1, 40, 70}, 1, 1, 8), 8);
        // Fully masked rows: zeros (masked_rows_zero 1) or NaN (0), in y and the gradients.
        for (int zero : {1, 0}) {
            Attn c = make_attn("flash masked rows", {2, 1, 20, D, 80, D}, {2, 1, 20, 80}, zero, 1, 8);
            for (i64 j = 0; j < 80; ++j) c.bias[(1 * 20 + 3) * 80 + j] = -Inff, c.bias[(0 * 20 + 17) * 80 + j] = -Inff;
            flash_case(c, 8);
        }
    }
}

// ---------------------------------------------------------------- layer norm

struct LnStats {
    double mean, invstd;
};

LnStats ln_stats(const double* x, i64 cols, double eps) {
    double m = 0;
    for (i64 c = 0; c < cols; ++c) m += x[c];
    m /= cols;
    double q = 0;
    for (i64 c = 0; c < cols; ++c) q += (x[c] - m) * (x[c] - m);
    return {m, 1.0 / std::sqrt(q / cols + eps)};
}

void test_layer_norm() {
    struct Case {
        i64 rows, cols;
        unsigned grid;
        bool bias;
    };
    const float eps = 1e-5f;
    for (Case cs : {Case{6, 300, 6, true}, Case{6, 20, 6, false}, Case{9, 45, 4, true}}) {
        i64 n = cs.rows * cs.cols;
        vector<float> x = rand_vec(n, -3, 3), scale = rand_vec(cs.cols, 0.5, 1.5), bias = rand_vec(cs.cols, -1, 1);
        for (i64 c = 0; c < cs.cols; ++c) x[c] += 10.0f;  // a row with an offset mean
        vector<float> y(n, 3), mean(cs.rows, 3), invstd(cs.rows, 3);
        vector<double> wy(n), wm(cs.rows), wi(cs.rows);
        for (i64 r = 0; r < cs.rows; ++r) {
            vector<double> xr(x.begin() + r * cs.cols, x.begin() + (r + 1) * cs.cols);
            LnStats s = ln_stats(xr.data(), cs.cols, eps);
            wm[r] = s.mean, wi[r] = s.invstd;
            for (i64 c = 0; c < cs.cols; ++c)
                wy[r * cs.cols + c] = (xr[c] - s.mean) * s.invstd * scale[c] + (cs.bias ? bias[c] : 0.0);
        }
        string name = "layer_norm_f32 " + std::to_string(cs.rows) + "x" + std::to_string(cs.cols) +
                      (cs.bias ? " bias" : " no bias") + " grid " + std::to_string(cs.grid);
        set_current(name);
        launch(layer_norm_f32, dim3(cs.grid), B256, (const float*)x.data(), (const float*)scale.data(),
               cs.bias ? (const float*)bias.data() : nullptr, y.data(), mean.data(), invstd.data(), cs.rows, cs.cols,
               eps);
        check_close(name + " y", y, wy, 1e-5, 2e-5);
        check_close(name + " mean", mean, wm, 1e-5, 1e-6);
        check_close(name + " invstd", invstd, wi, 1e-5, 0);
        // Without the statistics outputs.
        vector<float> y2(n, 3);
        launch(layer_norm_f32, dim3(cs.grid), B256, (const float*)x.data(), (const float*)scale.data(),
               cs.bias ? (const float*)bias.data() : nullptr, y2.data(), (float*)nullptr, (float*)nullptr, cs.rows,
               cs.cols, eps);
        check_close(name + " y (no stats out)", y2, wy, 1e-5, 2e-5);
    }
}

// Σ dy·LayerNorm(x) of one row, in double.
double ln_row_loss(const vector<double>& x, const vector<float>& scale, const float* dy, double eps) {
    LnStats s = ln_stats(x.data(), (i64)x.size(), eps);
    double l = 0;
    for (size_t c = 0; c < x.size(); ++c) l += dy[c] * (x[c] - s.mean) * s.invstd * scale[c];
    return l;
}

void test_layer_norm_grad() {
    struct Case {
        i64 rows, cols;
        unsigned grid;
    };
    const float eps = 1e-5f;
    for (Case cs : {Case{6, 45, 6}, Case{10, 70, 4}, Case{3, 300, 3}}) {
        i64 n = cs.rows * cs.cols;
        vector<float> x = rand_vec(n, -2, 2), dy = rand_vec(n, -1, 1), scale = rand_vec(cs.cols, 0.5, 1.5);
        vector<float> dx(n, 3), mean(cs.rows, 3), invstd(cs.rows, 3);
        string name = "layer_norm_grad_f32 " + std::to_string(cs.rows) + "x" + std::to_string(cs.cols) + " grid " +
                      std::to_string(cs.grid);
        set_current(name);
        launch(layer_norm_grad_f32, dim3(cs.grid), B256, (const float*)dy.data(), (const float*)x.data(),
               (const float*)scale.data(), dx.data(), mean.data(), invstd.data(), cs.rows, cs.cols, eps);
        vector<double> fd(n), wm(cs.rows), wi(cs.rows);
        const double h = 1e-4;
        for (i64 r = 0; r < cs.rows; ++r) {
            vector<double> xr(x.begin() + r * cs.cols, x.begin() + (r + 1) * cs.cols);
            LnStats s = ln_stats(xr.data(), cs.cols, eps);
            wm[r] = s.mean, wi[r] = s.invstd;
            for (i64 c = 0; c < cs.cols; ++c) {
                double keep = xr[c];
                xr[c] = keep + h;
                double lp = ln_row_loss(xr, scale, dy.data() + r * cs.cols, eps);
                xr[c] = keep - h;
                double lm = ln_row_loss(xr, scale, dy.data() + r * cs.cols, eps);
                xr[c] = keep;
                fd[r * cs.cols + c] = (lp - lm) / (2 * h);
            }
        }
        check_close(name + " dx vs finite differences", dx, fd, 1e-3, 1e-4 * max_abs(fd));
        check_close(name + " mean", mean, wm, 1e-5, 1e-6);
        check_close(name + " invstd", invstd, wi, 1e-5, 0);

        // dscale = Σ_r dy·x̂, dbias = Σ_r dy, from the statistics the kernel just wrote.
        vector<float> dscale(cs.cols + 3, 5), dbias(cs.cols + 3, 5);
        vector<double> ws(cs.cols + 3, 5), wb(cs.cols + 3, 5), ms(cs.cols, 0), mb(cs.cols, 0);
        for (i64 c = 0; c < cs.cols; ++c) {
            double s = 0, b = 0;
            for (i64 r = 0; r < cs.rows; ++r) {
                double d = dy[r * cs.cols + c], t = d * (x[r * cs.cols + c] - wm[r]) * wi[r];
                s += t, b += d, ms[c] += std::fabs(t), mb[c] += std::fabs(d);
            }
            ws[c] = s, wb[c] = b;
        }
        string pname = "layer_norm_params_grad_f32 " + std::to_string(cs.rows) + "x" + std::to_string(cs.cols);
        set_current(pname);
        unsigned grid = (unsigned)((cs.cols + 31) / 32);
        launch(layer_norm_params_grad_f32, dim3(grid), dim3(32, 8), (const float*)dy.data(), (const float*)x.data(),
               (const float*)mean.data(), (const float*)invstd.data(), dscale.data(), dbias.data(), cs.rows, cs.cols);
        check_close(pname + " dscale", dscale, ws, 1e-5, 2e-6 * max_abs(ms));
        check_close(pname + " dbias", dbias, wb, 1e-5, 2e-6 * max_abs(mb));
        // dbias not wanted (a null pointer).
        vector<float> dscale2(cs.cols + 3, 5);
        launch(layer_norm_params_grad_f32, dim3(grid), dim3(32, 8), (const float*)dy.data(), (const float*)x.data(),
               (const float*)mean.data(), (const float*)invstd.data(), dscale2.data(), (float*)nullptr, cs.rows,
               cs.cols);
        check_close(pname + " dscale (null dbias)", dscale2, ws, 1e-5, 2e-6 * max_abs(ms));
    }
}

// ---------------------------------------------------------------- GeluGrad

void test_gelu_grad() {
    const size_t n = 700;
    for (int approx = 0; approx <= 1; ++approx) {
        vector<float> x = rand_vec(n, -5, 5), dy = rand_vec(n, -2, 2), dx(n, 3);
        x[0] = 0.0f;
        string name = string("gelu_grad_f32 ") + (approx ? "tanh" : "exact");
        set_current(name);
        launch(gelu_grad_f32, dim3(2), B256, (const float*)dy.data(), (const float*)x.data(), dx.data(), (i64)n,
               approx);
        vector<double> fd(n);
        const double h = 1e-5;
        for (size_t i = 0; i < n; ++i) {
            auto f = approx ? gelu_tanh_d : gelu_exact_d;
            fd[i] = dy[i] * (f(x[i] + h) - f(x[i] - h)) / (2 * h);
        }
        check_close(name + " vs finite differences", dx, fd, 1e-3, 1e-6);
        // And the closed forms in double, tighter.
        vector<double> exact(n);
        for (size_t i = 0; i < n; ++i) {
            double v = x[i], d;
            if (approx) {
                double k = std::sqrt(2.0 / M_PI), c = 0.044715, t = std::tanh(k * (v + c * v * v * v));
                d = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * c * v * v);
            } else {
                d = 0.5 * (1 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
            }
            exact[i] = dy[i] * d;
        }
        check_close(name + " vs closed form", dx, exact, 1e-5, 1e-6);
    }
}

// ---------------------------------------------------------------- softmax cross-entropy

struct Xent {
    i64 rows, cols;
    vector<float> x;
    vector<i64> labels;
    vector<float> weights;  // empty: none
    i64 ignore;
    int has_ignore;
};

bool xent_skip(const Xent& p, i64 r) {
    i64 l = p.labels[r];
    return (p.has_ignore && l == p.ignore) || l < 0 || l >= p.cols;
}

double xent_w(const Xent& p, i64 r) {
    if (xent_skip(p, r)) return 0;
    return p.weights.empty() ? 1.0 : p.weights[p.labels[r]];
}

// w_r·(logsumexp(x_r) − x_r[label]), in double.
double xent_row(const Xent& p, const double* xr, i64 r) {
    if (xent_skip(p, r)) return 0;
    double m = -Inf, s = 0;
    for (i64 c = 0; c < p.cols; ++c) m = std::max(m, xr[c]);
    for (i64 c = 0; c < p.cols; ++c) s += std::exp(xr[c] - m);
    return xent_w(p, r) * (m + std::log(s) - xr[p.labels[r]]);
}

// The reduced loss the gradient differentiates: mode 0 none (Σ dloss_r·l_r), 1 sum, 2 mean.
double xent_loss(const Xent& p, const vector<double>& x, int mode, const vector<float>& dloss) {
    double s = 0, sw = 0;
    for (i64 r = 0; r < p.rows; ++r) {
        double l = xent_row(p, x.data() + r * p.cols, r);
        s += mode == 0 ? dloss[r] * l : l;
        sw += xent_w(p, r);
    }
    if (mode == 1) return s * dloss[0];
    if (mode == 2) return sw == 0 ? 0 : s / sw * dloss[0];
    return s;
}

Xent make_xent(i64 rows, i64 cols, bool weights, bool ignore_neg) {
    Xent p{rows, cols, rand_vec(rows * cols, -4, 4), vector<i64>(rows), {}, ignore_neg ? -100 : 3, 1};
    for (auto& l : p.labels) l = uni_int(0, cols - 1);
    p.labels[1] = p.ignore;  // an ignored row
    if (!ignore_neg) p.labels[2] = 3;
    if (weights) p.weights = rand_vec(cols, 0.2, 2.0);
    return p;
}

// Runs xent_rows_f32 with `grid` blocks; returns (loss, w, err).
std::tuple<vector<float>, vector<float>, i64> run_xent_rows(const Xent& p, unsigned grid) {
    vector<float> loss(p.rows, 9), w(p.rows, 9);
    i64 err = 0;
    launch(xent_rows_f32, dim3(grid), B256, (const float*)p.x.data(), (const i64*)p.labels.data(),
           p.weights.empty() ? (const float*)nullptr : (const float*)p.weights.data(), loss.data(), w.data(), p.rows,
           p.cols, p.ignore, p.has_ignore, &err);
    return {loss, w, err};
}

float run_finish(const vector<float>& a, const vector<float>& w, int mean, unsigned threads) {
    float out = 12345;
    launch(xent_finish_f32, dim3(1), dim3(threads), (const float*)a.data(), (const float*)w.data(), &out,
           (i64)a.size(), mean);
    return out;
}

void test_xent() {
    struct Case {
        i64 rows, cols;
        bool weights, ignore_neg;
        unsigned grid;
        unsigned finish_threads;
    };
    for (Case cs : {Case{10, 37, false, true, 10, 1024}, Case{10, 37, true, false, 3, 256},
                    Case{6, 300, true, true, 6, 256}, Case{12, 5, false, true, 5, 256}}) {
        Xent p = make_xent(cs.rows, cs.cols, cs.weights, cs.ignore_neg);
        string tag = std::to_string(cs.rows) + "x" + std::to_string(cs.cols) + (cs.weights ? " weights" : "") +
                     " ignore " + std::to_string(p.ignore) + " grid " + std::to_string(cs.grid);
        set_current("xent_rows_f32 " + tag);
        auto [loss, w, err] = run_xent_rows(p, cs.grid);
        vector<double> wl(p.rows), ww(p.rows);
        vector<double> xd = to_d(p.x);
        for (i64 r = 0; r < p.rows; ++r) wl[r] = xent_row(p, xd.data() + r * p.cols, r), ww[r] = xent_w(p, r);
        check_close("xent_rows_f32 " + tag + " loss", loss, wl, 1e-5, 1e-5);
        check_close("xent_rows_f32 " + tag + " weight", w, ww, 0, 0);
        check_true("xent_rows_f32 " + tag + " err", err == 0, "err = " + std::to_string(err));

        for (int mean = 0; mean <= 1; ++mean) {
            string fname = string("xent_finish_f32 ") + (mean ? "mean " : "sum ") + tag + " block " +
                           std::to_string(cs.finish_threads);
            set_current(fname);
            float out = run_finish(loss, w, mean, cs.finish_threads);
            double s = std::accumulate(wl.begin(), wl.end(), 0.0), sw = std::accumulate(ww.begin(), ww.end(), 0.0);
            double want = mean ? (sw == 0 ? 0 : s / sw) : s;
            check_close(fname, vector<float>{out}, {want}, 1e-5, 1e-5);
        }

        // Gradients: mode 2 mean (wsum = Σw from xent_finish, as the launcher does), 1 sum,
        // 0 none (one dloss per row).
        for (int mode : {2, 1, 0}) {
            vector<float> dloss = mode == 0 ? rand_vec(p.rows, -1.5, 1.5) : vector<float>{0.7f};
            vector<float> wsum;
            if (mode == 2) wsum.push_back(run_finish(w, w, 0, 256));
            vector<float> dx(p.rows * p.cols, 3);
            const char* mname[] = {"none", "sum", "mean"};
            string gname = string("xent_grad_f32 ") + mname[mode] + " " + tag;
            set_current(gname);
            launch(xent_grad_f32, dim3(cs.grid), B256, (const float*)dloss.data(), (const float*)p.x.data(),
                   (const i64*)p.labels.data(), (const float*)w.data(),
                   mode == 2 ? (const float*)wsum.data() : (const float*)nullptr, dx.data(), p.rows, p.cols,
                   mode == 0 ? 1 : 0);
            vector<double> fd(p.rows * p.cols);
            const double h = 1e-4;
            for (i64 i = 0; i < p.rows * p.cols; ++i) {
                double keep = xd[i];
                xd[i] = keep + h;
                double lp = xent_loss(p, xd, mode, dloss);
                xd[i] = keep - h;
                double lm = xent_loss(p, xd, mode, dloss);
                xd[i] = keep;
                fd[i] = (lp - lm) / (2 * h);
            }
            check_close(gname + " vs finite differences", dx, fd, 1e-3, 1e-4 * max_abs(fd) + 1e-9);
        }
    }
    // Out-of-range labels (above, and negative without ignore_index) set err to 2 and skip the row.
    {
        Xent p = make_xent(8, 37, true, true);
        p.labels[4] = 37 + 3;
        string name = "xent_rows_f32 label out of range";
        set_current(name);
        auto [loss, w, err] = run_xent_rows(p, 8);
        check_true(name + " err", err == 2, "err = " + std::to_string(err) + ", expected 2");
        check_true(name + " row skipped", loss[4] == 0 && w[4] == 0,
                   "loss " + std::to_string(loss[4]) + ", w " + std::to_string(w[4]));
        p = make_xent(8, 37, false, true);
        p.has_ignore = 0;  // label −100 is not ignored now: out of range
        name = "xent_rows_f32 negative label without ignore_index";
        set_current(name);
        auto [loss2, w2, err2] = run_xent_rows(p, 3);
        check_true(name + " err", err2 == 2, "err = " + std::to_string(err2) + ", expected 2");
        check_true(name + " row skipped", loss2[1] == 0 && w2[1] == 0,
                   "loss " + std::to_string(loss2[1]) + ", w " + std::to_string(w2[1]));
    }
    // Every row ignored: the mean is 0, and so is the gradient.
    {
        Xent p = make_xent(5, 37, false, true);
        for (auto& l : p.labels) l = p.ignore;
        set_current("xent all rows ignored");
        auto [loss, w, err] = run_xent_rows(p, 5);
        float mean = run_finish(loss, w, 1, 256);
        float wsum = run_finish(w, w, 0, 256);
        vector<float> dloss{1.0f}, dx(p.rows * p.cols, 3);
        launch(xent_grad_f32, dim3(5), B256, (const float*)dloss.data(), (const float*)p.x.data(),
               (const i64*)p.labels.data(), (const float*)w.data(), (const float*)&wsum, dx.data(), p.rows, p.cols, 0);
        check_true("xent_finish_f32 mean, all rows ignored", mean == 0.0f && err == 0,
                   "mean " + std::to_string(mean) + ", err " + std::to_string(err));
        check_close("xent_grad_f32 mean, all rows ignored", dx, vector<double>(dx.size(), 0.0), 0, 0);
    }
}

// bf16 scores (a model's logits as stored) and bf16 gradients: the f32 kernels' results on the
// widened scores, bit for bit, the gradient rounded once (what Cast(to=f32) before and
// Cast(to=bf16) after the f32 kernels give).
void test_xent_bf16() {
    for (int mode : {2, 0}) {
        Xent p = make_xent(9, 300, mode == 0, true);
        vector<bf16_t> xb(p.x.size());
        for (size_t k = 0; k < xb.size(); ++k) xb[k] = f32_to_bf16(p.x[k]), p.x[k] = bf16_to_f32(xb[k]);
        string tag = mode == 2 ? "mean" : "none, weights";
        set_current("xent_rows_bf16 " + tag);
        auto [loss, w, err] = run_xent_rows(p, 4);
        vector<float> lb(p.rows, 9), wb(p.rows, 9);
        i64 eb = 0;
        launch(xent_rows_bf16, dim3(4), B256, (const bf16_t*)xb.data(), (const i64*)p.labels.data(),
               p.weights.empty() ? (const float*)nullptr : (const float*)p.weights.data(), lb.data(), wb.data(),
               p.rows, p.cols, p.ignore, p.has_ignore, &eb);
        check_equal("xent_rows_bf16 " + tag + " loss = f32 kernel on widened scores", lb, loss);
        check_equal("xent_rows_bf16 " + tag + " weight", wb, w);
        check_true("xent_rows_bf16 " + tag + " err", eb == 0 && err == 0, "err = " + std::to_string(eb));

        vector<float> dloss = mode == 0 ? rand_vec(p.rows, -1.5, 1.5) : vector<float>{0.7f};
        vector<float> wsum;
        if (mode == 2) wsum.push_back(run_finish(w, w, 0, 256));
        const float* wsp = mode == 2 ? (const float*)wsum.data() : (const float*)nullptr;
        int per_row = mode == 0 ? 1 : 0;
        size_t n = p.x.size();
        vector<float> ref(n, 3), from_bf16(n, 3);
        vector<bf16_t> to_bf16(n, 3), both(n, 3), rounded(n);
        launch(xent_grad_f32, dim3(4), B256, (const float*)dloss.data(), (const float*)p.x.data(),
               (const i64*)p.labels.data(), (const float*)w.data(), wsp, ref.data(), p.rows, p.cols, per_row);
        for (size_t k = 0; k < n; ++k) rounded[k] = f32_to_bf16(ref[k]);
        set_current("xent_grad bf16 variants " + tag);
        launch(xent_grad_bf16_f32, dim3(4), B256, (const float*)dloss.data(), (const bf16_t*)xb.data(),
               (const i64*)p.labels.data(), (const float*)w.data(), wsp, from_bf16.data(), p.rows, p.cols, per_row);
        launch(xent_grad_f32_bf16, dim3(4), B256, (const float*)dloss.data(), (const float*)p.x.data(),
               (const i64*)p.labels.data(), (const float*)w.data(), wsp, to_bf16.data(), p.rows, p.cols, per_row);
        launch(xent_grad_bf16, dim3(4), B256, (const float*)dloss.data(), (const bf16_t*)xb.data(),
               (const i64*)p.labels.data(), (const float*)w.data(), wsp, both.data(), p.rows, p.cols, per_row);
        check_equal("xent_grad_bf16_f32 " + tag + " = f32 kernel on widened scores", from_bf16, ref);
        check_equal("xent_grad_f32_bf16 " + tag + " = f32 kernel, rounded", to_bf16, rounded);
        check_equal("xent_grad_bf16 " + tag + " = f32 kernel on widened scores, rounded", both, rounded);
    }
}

// ---------------------------------------------------------------- optimizer (ClipGradNorm, AdamW)

// The launcher's shapes (runtime/src/cuda/ops/optim.rs): sum of squares ceil(n / 256) blocks
// of 256, at most 1024; AdamW `elementwise(n)`, ceil(n / 256) blocks of 256 (at most 65536).
unsigned sumsq_blocks(size_t n) { return (unsigned)std::clamp<size_t>((n + 255) / 256, 1, 1024); }
unsigned elementwise_blocks(size_t n) { return (unsigned)std::clamp<size_t>((n + 255) / 256, 1, 65536); }

struct Clip {
    float norm, scale;
};

// ClipGradNorm as the launcher runs it: one zeroed double, a sum-of-squares launch per
// non-empty gradient (`grid` 0: the launcher's grid), then the one-thread finish.
Clip run_clip(const vector<vector<float>>& grads, float max_norm, int has_max, unsigned grid = 0) {
    double acc = 0.0;
    for (auto& g : grads) {
        if (g.empty()) continue;
        launch(sumsq_f64, dim3(grid ? grid : sumsq_blocks(g.size())), B256, (const float*)g.data(), (i64)g.size(),
               &acc);
    }
    Clip c{12345.0f, 12345.0f};
    launch(clip_finish, dim3(1), dim3(1), (const double*)&acc, &c.norm, &c.scale, max_norm, has_max);
    return c;
}

// runtime/src/ops/optim.rs: Σ per gradient in f64 (in order), √, rounded to f32 once.
float cpu_norm(const vector<vector<float>>& grads) {
    double sum = 0.0;
    for (auto& g : grads) {
        double t = 0.0;
        for (float x : g) t += (double)x * (double)x;
        sum += t;
    }
    return (float)std::sqrt(sum);
}

// `clip_scale`, in f32 as the CPU computes it.
float cpu_clip_scale(float norm, float max_norm, bool has_max) {
    if (!has_max || !std::isfinite(norm)) return 1.0f;
    float coef = max_norm / (norm + 1e-6f);
    return coef < 1.0f ? coef : 1.0f;
}

string fstr(float x) {
    std::ostringstream os;
    os.precision(9);
    os << x;
    return os.str();
}

void test_clip_grad_norm() {
    // One tensor: n = 1, less than a block, a block and a bit, several blocks, and one over
    // the grid cap run on 3 blocks (the grid-stride loop takes many turns).
    struct One {
        size_t n;
        unsigned grid;
    };
    for (One cs : {One{1, 0}, One{255, 0}, One{257, 0}, One{5000, 0}, One{70001, 0}, One{20000, 3}}) {
        vector<float> g = rand_vec(cs.n, -2, 2);
        string name = "sumsq_f64+clip_finish n=" + std::to_string(cs.n) +
                      (cs.grid ? " grid " + std::to_string(cs.grid) : " launcher grid");
        set_current(name);
        Clip c = run_clip({g}, 0.0f, 0, cs.grid);
        double want = 0;
        for (float x : g) want += (double)x * x;
        want = std::sqrt(want);
        check_close(name + " norm vs f64", vector<float>{c.norm}, {want}, 1e-6, 0);
        check_true(name + " norm vs CPU rounding", c.norm == cpu_norm({g}),
                   "kernel " + fstr(c.norm) + ", CPU " + fstr(cpu_norm({g})));
        check_true(name + " scale without max_norm", c.scale == 1.0f, "scale " + fstr(c.scale));
    }
    // Three tensors into one accumulator (sizes 1, 300 and 777; values of different scales).
    vector<vector<float>> grads{rand_vec(1, -3, 3), rand_vec(300, -0.01, 0.01), rand_vec(777, -1, 1)};
    double want = 0;
    for (auto& g : grads)
        for (float x : g) want += (double)x * x;
    want = std::sqrt(want);
    {
        string name = "clip 3 tensors";
        set_current(name);
        Clip c = run_clip(grads, 0.0f, 0);
        check_close(name + " norm vs f64", vector<float>{c.norm}, {want}, 1e-6, 0);
        check_true(name + " norm vs CPU rounding", c.norm == cpu_norm(grads),
                   "kernel " + fstr(c.norm) + ", CPU " + fstr(cpu_norm(grads)));
        check_true(name + " no max_norm: scale 1", c.scale == 1.0f, "scale " + fstr(c.scale));
        float above = (float)want * 2.0f;
        c = run_clip(grads, above, 1);
        check_true(name + " max_norm above the norm: scale 1", c.scale == 1.0f, "scale " + fstr(c.scale));
        float below = (float)want * 0.25f;
        c = run_clip(grads, below, 1);
        check_close(name + " max_norm below the norm: scale vs f64", vector<float>{c.scale},
                    {(double)below / (want + 1e-6)}, 1e-6, 0);
        check_true(name + " max_norm below the norm: scale as clip_scale",
                   c.scale == cpu_clip_scale(c.norm, below, true) && c.scale < 1.0f,
                   "kernel " + fstr(c.scale) + ", clip_scale " + fstr(cpu_clip_scale(c.norm, below, true)));
    }
    // A NaN (or ∞) gradient: the norm says so and the scale is 1 (the gradients are left as they
    // are, for the trainer to report).
    for (float bad : {NaNf, Inff}) {
        vector<vector<float>> gs = grads;
        gs[2][400] = bad;
        string name = string("clip 3 tensors with a") + (std::isnan(bad) ? " NaN" : "n inf") + " gradient";
        set_current(name);
        Clip c = run_clip(gs, 1.0f, 1);
        bool norm_ok = std::isnan(bad) ? std::isnan(c.norm) : c.norm == Inff;
        check_true(name + ": norm " + (std::isnan(bad) ? "NaN" : "inf"), norm_ok, "norm " + fstr(c.norm));
        check_true(name + ": scale 1", c.scale == 1.0f, "scale " + fstr(c.scale));
    }
    // Only empty gradients: no sum-of-squares launch, norm 0, scale 1.
    {
        set_current("clip empty gradients");
        Clip c = run_clip({vector<float>{}, vector<float>{}}, 1.0f, 1);
        check_true("clip empty gradients: norm 0, scale 1", c.norm == 0.0f && c.scale == 1.0f,
                   "norm " + fstr(c.norm) + ", scale " + fstr(c.scale));
    }
}

// One step of torch.optim.AdamW with the host's per-step scalars.
struct AdamK {
    float k[7];  // decay, 1−β1, β2, 1−β2, step_size, √bc2, ε
};

AdamK adam_k(float lr, float wd, float b1, float b2, float eps, int t) {
    double bc1 = 1.0 - std::pow((double)b1, t), bc2 = 1.0 - std::pow((double)b2, t);
    return AdamK{{1.0f - lr * wd, 1.0f - b1, b2, 1.0f - b2, (float)(lr / bc1), (float)std::sqrt(bc2), eps}};
}

// The CPU kernel's update (runtime/src/ops/optim.rs, `Coefficients::update`) in f32, in its
// order; each product rounded on its own, as Rust does.
void cpu_adamw(const AdamK& ak, float scale, float& p, float g, float& m, float& v) {
    const float* k = ak.k;
    g = g * scale;
    p *= k[0];
    m += k[1] * (g - m);
    v = v * k[2] + k[3] * (g * g);
    float denom = std::sqrt(v) / k[5] + k[6];
    p += -k[4] * (m / denom);
}

vector<unsigned> bits_of(const vector<float>& v) {
    vector<unsigned> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = __float_as_uint(v[i]);
    return b;
}

void test_adamw() {
    struct Case {
        size_t n;
        unsigned grid;  // 0: the launcher's
        float scale;
        int t;
    };
    for (Case cs : {Case{1, 0, 1.0f, 1}, Case{255, 0, 0.37f, 3}, Case{256, 0, 1.0f, 10}, Case{700, 0, 0.8f, 1000},
                    Case{4099, 0, 0.05f, 2}, Case{3000, 2, 0.6f, 7}}) {
        const size_t n = cs.n;
        vector<float> p = rand_vec(n, -1, 1), g = rand_vec(n, -0.5, 0.5), m = rand_vec(n, -0.1, 0.1),
                      v = rand_vec(n, 0, 0.01);
        if (n > 3) v[3] = 0.0f, m[3] = 0.0f;  // a first step's moments
        AdamK k = adam_k(2e-3f, 0.01f, 0.9f, 0.999f, 1e-8f, cs.t);
        vector<float> wp = p, wm = m, wv = v;
        for (size_t i = 0; i < n; ++i) cpu_adamw(k, cs.scale, wp[i], g[i], wm[i], wv[i]);
        // Outputs start as garbage: the kernel must write every element.
        vector<float> po(n, NaNf), mo(n, NaNf), vo(n, NaNf);
        string name = "adamw_f32 n=" + std::to_string(n) +
                      (cs.grid ? " grid " + std::to_string(cs.grid) : " launcher grid") + " scale " +
                      fstr(cs.scale) + " t=" + std::to_string(cs.t);
        set_current(name);
        launch(adamw_f32, dim3(cs.grid ? cs.grid : elementwise_blocks(n)), B256, (const float*)p.data(),
               (const float*)g.data(), (const float*)m.data(), (const float*)v.data(), (const float*)&cs.scale,
               (const float*)k.k, po.data(), mo.data(), vo.data(), (i64)n);
        // Bit for bit: the same f32 operations in the same order, each rounded once (no fma on
        // either side), IEEE division and square root.
        check_equal(name + " p bits", bits_of(po), bits_of(wp));
        check_equal(name + " m bits", bits_of(mo), bits_of(wm));
        check_equal(name + " v bits", bits_of(vo), bits_of(wv));
        // And torch's AdamW in double, as a check of the reference itself.
        vector<double> dp(n), dm(n), dv(n);
        for (size_t i = 0; i < n; ++i) {
            double b1 = 0.9, b2 = 0.999, lr = 2e-3, gi = (double)g[i] * cs.scale;
            double mi = b1 * m[i] + (1 - b1) * gi, vi = b2 * v[i] + (1 - b2) * gi * gi;
            double bc1 = 1 - std::pow(b1, cs.t), bc2 = 1 - std::pow(b2, cs.t);
            dp[i] = (double)p[i] * (1 - lr * 0.01) - lr / bc1 * mi / (std::sqrt(vi) / std::sqrt(bc2) + 1e-8);
            dm[i] = mi, dv[i] = vi;
        }
        check_close(name + " p vs f64 AdamW", po, dp, 1e-4, 1e-6);
        check_close(name + " m vs f64 AdamW", mo, dm, 1e-4, 1e-7);
        check_close(name + " v vs f64 AdamW", vo, dv, 1e-4, 1e-9);
    }
}

}  // namespace

int main() {
    std::signal(SIGALRM, on_alarm);
    alarm(300);
    test_selftest(3, 256);
    test_selftest(1, 1024);
    test_selftest(2, 64);
    test_unary();
    test_is_nan();
    test_binary();
    test_compare();
    test_logic();
    test_where();
    test_copy();
    test_gather();
    test_gather_nd();
    test_casts();
    test_cast_f32_bf16();
    test_cast_bf16_f32();
    test_cast_bf16_bool();
    test_binary_bf16();
    test_elementwise_chain();
    test_elementwise_chain_one_dim();
    test_fill();
    test_fill_rows_bf16();
    test_scatter_add();
    test_reduce();
    test_colsum();
    test_softmax();
    test_attention();
    test_flash_attention();
    test_layer_norm();
    test_layer_norm_grad();
    test_gelu_grad();
    test_xent();
    test_xent_bf16();
    test_clip_grad_norm();
    test_adamw();
    std::printf("emulated kernels: %d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
