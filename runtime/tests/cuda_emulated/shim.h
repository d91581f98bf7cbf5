// Host emulation of the CUDA C subset that runtime/src/cuda/kernels.cu uses, so that the
// kernels compile as C++20 with g++ and run on the CPU (see emulate.cpp and
// scripts/emulate-kernels.sh).
//
// Execution model: `launch` runs the grid's blocks ONE AT A TIME; each block runs as
// blockDim.x·y·z std::threads, one per CUDA thread (taken from a pool of reused workers).
// `__shared__` is `static`, so a function-static array is the block's shared memory (blocks
// never overlap, so successive blocks reuse it). `__syncthreads` is a std::barrier over the
// block's threads; `__shfl_xor_sync` writes the lane's value to a per-warp slot array, arrives
// at a per-warp std::barrier and reads the partner lane's slot (warps are 32 consecutive linear
// thread ids, as on the device). atomicCAS / atomicAdd go through std::atomic_ref.
//
// Data races in a kernel (a missing __syncthreads) are real races between std::threads here:
// build emulate.cpp with -fsanitize=thread to have ThreadSanitizer report them.
#pragma once

// kernels.cu takes the emulator's versions of the few device intrinsics it cannot express in C++.
#define ADAPTC_EMULATED 1

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <math.h>
#include <memory>
#include <semaphore>
#include <thread>
#include <tuple>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

namespace emu {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;

// State of the block now running (one block at a time).
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline std::uint64_t shfl_slots[2][kMaxThreads / kWarp][kWarp];
// Which of the two slot arrays the calling thread's next shuffle uses (reset per block).
inline thread_local unsigned shfl_parity = 0;
// The same for the mma exchange (mma_bf16_16816, below).
inline thread_local unsigned mma_parity = 0;
inline unsigned block_threads = 0;

inline unsigned linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    static_assert(sizeof(T) <= sizeof(std::uint64_t), "shuffle of a wide type");
    assert(mask == 0xffffffffu);
    (void)mask;
    unsigned t = emu::linear_tid();
    unsigned warp = t / emu::kWarp, lane = t % emu::kWarp;
    unsigned partner = lane ^ (unsigned)lane_mask;
    // Every kernel shuffles within full warps only.
    if (warp * emu::kWarp + emu::kWarp > emu::block_threads || partner >= (unsigned)emu::kWarp) {
        std::fprintf(stderr, "emulator: __shfl_xor_sync in a partial warp (block of %u threads)\n",
                     emu::block_threads);
        std::abort();
    }
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    // Successive shuffles alternate between two slot arrays, so one arrival per shuffle is
    // enough: a lane writes an array again two shuffles later, after the next arrival, which
    // every lane reaches only once it has read this one.
    unsigned p = emu::shfl_parity;
    emu::shfl_parity ^= 1u;
    emu::shfl_slots[p][warp][lane] = bits;
    emu::warp_barriers[warp]->arrive_and_wait();  // every lane has written
    bits = emu::shfl_slots[p][warp][partner];
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}

inline unsigned long long atomicCAS(unsigned long long* addr, unsigned long long compare, unsigned long long val) {
    std::atomic_ref<unsigned long long> a(*addr);
    a.compare_exchange_strong(compare, val);
    return compare;  // the old value either way
}

template <class T>
inline T atomicAdd(T* addr, T val) {
    return std::atomic_ref<T>(*addr).fetch_add(val);
}

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}

inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// A product rounded on its own (never fused into an fma on the device). g++ does not fuse it
// either: scripts/emulate-kernels.sh builds for the x86-64 baseline, which has no FMA.
inline float __fmul_rn(float a, float b) { return a * b; }

using std::isnan;

namespace emu {

// The std::threads that run a block's CUDA threads: worker k runs CUDA thread k (linear id) of
// every block. They are created once and reused, block after block (creating 256 OS threads
// per block costs far more than the kernels' work).
class Pool {
  public:
    ~Pool() {
        stop_ = true;
        for (auto& w : workers_) w->go.release();
        for (auto& w : workers_) w->th.join();
    }

    // Runs job(k) for k in [0, n), each on its own worker thread, and waits for all of them.
    void run(unsigned n, std::function<void(unsigned)> job) {
        while (workers_.size() < n) {
            auto w = std::make_unique<Worker>();
            unsigned id = (unsigned)workers_.size();
            Worker* wp = w.get();
            w->th = std::thread([this, id, wp] {
                for (;;) {
                    wp->go.acquire();
                    if (stop_) return;
                    job_(id);
                    if (remaining_.fetch_sub(1) == 1) remaining_.notify_one();
                }
            });
            workers_.push_back(std::move(w));
        }
        job_ = std::move(job);
        remaining_.store((int)n);
        for (unsigned k = 0; k < n; ++k) workers_[k]->go.release();
        for (int v; (v = remaining_.load()) != 0;) remaining_.wait(v);
    }

  private:
    struct Worker {
        std::thread th;
        std::binary_semaphore go{0};
    };
    std::vector<std::unique_ptr<Worker>> workers_;
    std::function<void(unsigned)> job_;
    std::atomic<int> remaining_{0};
    std::atomic<bool> stop_{false};
};

inline Pool pool;

// Runs `kernel(args...)` over `grid` blocks of `block` threads, block after block.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "argument count differs from the kernel's");
    const std::tuple<P...> params(std::forward<A>(args)...);
    unsigned nthreads = block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > (unsigned)kMaxThreads) {
        std::fprintf(stderr, "emulator: bad block size %u\n", nthreads);
        std::abort();
    }
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> bar((std::ptrdiff_t)nthreads);
                block_barrier = &bar;
                block_threads = nthreads;
                warp_barriers.clear();
                for (unsigned w = 0; w * kWarp < nthreads; ++w) {
                    unsigned size = std::min<unsigned>(kWarp, nthreads - w * kWarp);
                    warp_barriers.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)size));
                }
                pool.run(nthreads, [&](unsigned t) {
                    threadIdx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
                    blockIdx = dim3(bx, by, bz);
                    blockDim = block;
                    gridDim = grid;
                    shfl_parity = 0;
                    mma_parity = 0;
                    std::tuple<P...> local = params;  // each thread's own copy of the arguments
                    std::apply(kernel, local);
                });
                block_barrier = nullptr;
            }
}

}  // namespace emu


namespace emu {
// Operands of the warp's mma in flight, per lane (two arrays, alternated as for shuffles).
struct MmaSlot {
    unsigned a[4], b[2];
};
inline MmaSlot mma_slots[2][kMaxThreads / kWarp][kWarp];

// bf16 bits → f32 (exact).
inline float bf16_bits(unsigned short h) {
    unsigned u = (unsigned)h << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
}  // namespace emu

// PTX mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32 as a warp exchange: every lane posts its A
// and B fragments, then computes its four C elements from the whole warp's, reading each
// element from the lane and register the PTX ISA assigns it (see kernels.cu). The products
// of bf16 values are exact in f32; they are summed in k order.
inline void mma_bf16_16816(float* c, const unsigned* a, const unsigned* b) {
    unsigned tid = emu::linear_tid();
    unsigned warp = tid / emu::kWarp, lane = tid % emu::kWarp;
    if (warp * emu::kWarp + emu::kWarp > emu::block_threads) {
        std::fprintf(stderr, "emulator: mma in a partial warp\n");
        std::abort();
    }
    unsigned par = emu::mma_parity;
    emu::mma_parity ^= 1u;
    emu::MmaSlot& mine = emu::mma_slots[par][warp][lane];
    for (int i = 0; i < 4; ++i) mine.a[i] = a[i];
    for (int i = 0; i < 2; ++i) mine.b[i] = b[i];
    emu::warp_barriers[warp]->arrive_and_wait();
    const emu::MmaSlot* w = emu::mma_slots[par][warp];
    // A(r, k): lane 4·(r % 8) + (k % 8) / 2, register (r ≥ 8) + 2·(k ≥ 8), half k % 2.
    auto A = [&](int r, int k) {
        unsigned reg = w[4 * (r % 8) + (k % 8) / 2].a[(r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
        return emu::bf16_bits((unsigned short)(k % 2 ? reg >> 16 : reg & 0xffffu));
    };
    // B(k, n): lane 4·n + (k % 8) / 2, register (k ≥ 8), half k % 2.
    auto B = [&](int k, int n) {
        unsigned reg = w[4 * n + (k % 8) / 2].b[k >= 8 ? 1 : 0];
        return emu::bf16_bits((unsigned short)(k % 2 ? reg >> 16 : reg & 0xffffu));
    };
    int g = (int)lane / 4, t = (int)lane % 4;
    for (int e = 0; e < 4; ++e) {
        int r = g + (e >> 1) * 8, n = 2 * t + (e & 1);
        float acc = c[e];
        for (int k = 0; k < 16; ++k) acc += A(r, k) * B(k, n);
        c[e] = acc;
    }
}

using emu::launch;
