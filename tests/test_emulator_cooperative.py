"""Block-cooperative CUDA on the emulated backend: __shared__ tiles, __syncthreads, warp shuffles,
atomics, dynamic shared memory and 3-D geometry, each checked against NumPy; and the rules a GPU
would break silently (a missing barrier, an out-of-bounds shared index, a barrier or a shuffle
that not every thread reaches) caught as errors that name the kernel.

The kernels are CUDA source strings compiled through the emulator's own build path
(gpubp.backends.emulated.build_code) and launched like CuPy's RawKernel (emulated.Kernel). Outputs are
poisoned before a kernel writes them; sizes are not multiples of the tile or the block.
"""

import numpy as np
import pytest
from helpers import assert_close, assert_differs, assert_equal

from gpubp.backends import emulated as emulator
from gpubp.backends import get_backend
from gpubp.backends import kernel as K
from gpubp.errors import EmulatorError, GpubpError

FULL = 0xFFFFFFFF


@pytest.fixture(scope="module")
def cxx():
    return emulator.find_compiler()


def compiled(code, cxx, stem):
    """{kernel name: emulator.Kernel} for every kernel in ``code``."""
    lib = emulator.build_code(code, cxx, stem)
    return {name: emulator.Kernel(lib, name) for name in K.parse_signatures(code)}


def line_of(code, needle):
    """The 1-based line of ``code`` that holds ``needle`` (what __syncthreads errors report)."""
    return next(i for i, line in enumerate(code.splitlines(), 1) if needle in line)


# ---------------------------------------------------------------------------------------------
# A tiled matrix product: __shared__ tiles, __syncthreads, a 2-D grid of 2-D blocks
# ---------------------------------------------------------------------------------------------

MATMUL = r"""
#define TILE 16
// C (M, N) = A (M, K) @ B (K, N), row-major; one 16x16 tile of C per block.
extern "C" __global__ void matmul(const float* A, const float* B, float* C, int M, int K, int N) {
    __shared__ float As[TILE][TILE];
    __shared__ float Bs[TILE][TILE + 1];  // +1: no bank conflicts on the column reads
    int tx = threadIdx.x, ty = threadIdx.y;
    int row = blockIdx.y * TILE + ty, col = blockIdx.x * TILE + tx;
    float acc = 0.0f;
    for (int t = 0; t < K; t += TILE) {
        As[ty][tx] = (row < M && t + tx < K) ? A[row * K + t + tx] : 0.0f;
        Bs[ty][tx] = (t + ty < K && col < N) ? B[(t + ty) * N + col] : 0.0f;
        __syncthreads();
        for (int k = 0; k < TILE; ++k) acc += As[ty][k] * Bs[k][tx];
        __syncthreads();
    }
    if (row < M && col < N) C[row * N + col] = acc;
}
"""
RACY_MATMUL = MATMUL.replace("__syncthreads();", "")  # the planted bug: no barriers at all


def run_matmul(kernel, A, B, seed):
    (M, Kd), N = A.shape, B.shape[1]
    C = np.full((M, N), np.nan, np.float32)
    grid = (-(-N // 16), -(-M // 16), 1)
    kernel(grid, (16, 16, 1), (A, B, C, np.int32(M), np.int32(Kd), np.int32(N)), seed=seed)
    return C


def matrices(m, k, n):
    rng = np.random.default_rng(m * 1000 + n)
    return rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)


@pytest.mark.parametrize("shape", [(7, 33, 257), (1, 1, 1), (40, 16, 17)])
def test_tiled_matmul_with_shared_tiles_matches_numpy(cxx, shape):
    A, B = matrices(*shape)
    mm = compiled(MATMUL, cxx, "matmul")["matmul"]
    expected = A.astype(np.float64) @ B.astype(np.float64)
    for seed in (0, 1, 2, 12345):  # any order of the threads between barriers
        C = run_matmul(mm, A, B, seed)
        assert_close(C, expected, atol=1e-5, rtol=1e-5, what=f"tiled matmul {shape} seed {seed}")


def test_a_missing_syncthreads_gives_a_wrong_product(cxx):
    A, B = matrices(7, 33, 257)
    racy = compiled(RACY_MATMUL, cxx, "matmul_racy")["matmul"]
    assert "__syncthreads" not in RACY_MATMUL and "__shared__" in RACY_MATMUL
    expected = A.astype(np.float64) @ B.astype(np.float64)
    results = [run_matmul(racy, A, B, seed) for seed in (0, 1, 2)]
    for seed, C in zip((0, 1, 2), results):
        wrong = ~np.isclose(C, expected, atol=1e-4, rtol=1e-4)
        assert wrong.mean() > 0.5, f"seed {seed}: only {wrong.sum()} of {C.size} elements wrong"
    assert_differs(results[0], results[1])  # the order comes from the seed
    assert_equal(run_matmul(racy, A, B, 0), results[0])  # and only from it


# ---------------------------------------------------------------------------------------------
# Shared memory out of bounds: an error naming the kernel, the array and the index
# ---------------------------------------------------------------------------------------------

OUT_OF_BOUNDS = r"""
extern "C" __global__ void static_oob(float* out) {
    __shared__ float buf[32];
    buf[threadIdx.x] = 1.0f;  // 33 threads: thread 32 writes past the end
    __syncthreads();
    out[threadIdx.x] = buf[threadIdx.x];
}

extern "C" __global__ void static_2d_oob(float* out) {
    __shared__ float tile[4][8];
    tile[threadIdx.x % 4][threadIdx.x] = 2.0f;  // threads 8.. overrun the second dimension
    out[threadIdx.x] = 0.0f;
}

__device__ float stash(float v) {
    __shared__ int slots[16];  // declared inside a __device__ helper
    slots[threadIdx.x] = (int)v;
    return (float)slots[threadIdx.x];
}

extern "C" __global__ void helper_oob(float* out) { out[threadIdx.x] = stash(3.0f); }

extern "C" __global__ void dynamic_oob(float* out) {
    extern __shared__ float dyn[];
    dyn[threadIdx.x] = 1.0f;  // the launch gives 16 floats to 32 threads
    out[threadIdx.x] = dyn[threadIdx.x];
}
"""


# The first thread to overrun (in the shuffled order) reports: its index is its threadIdx.x.
@pytest.mark.parametrize("name, block, good_block, shared_mem, message", [
    ("static_oob", 33, 32, 0, r"^kernel static_oob block \(0,0,0\) thread \(32,0,0\): index 32 is out of "
                              r"bounds for __shared__ buf: dimension 1 has 32 elements$"),
    ("static_2d_oob", 12, 8, 0, r"^kernel static_2d_oob block \(0,0,0\) thread \((\d+),0,0\): index \1 is out of "
                                r"bounds for __shared__ tile: dimension 2 has 8 elements$"),
    ("helper_oob", 20, 16, 0, r"^kernel helper_oob block \(0,0,0\) thread \((\d+),0,0\): index \1 is out of "
                              r"bounds for __shared__ slots: dimension 1 has 16 elements$"),
    ("dynamic_oob", 32, 16, 64, r"^kernel dynamic_oob block \(0,0,0\) thread \((\d+),0,0\): index \1 is out of "
                                r"bounds for extern __shared__ dyn\[\] of 16 elements \(the launch gave 64 bytes "
                                r"of dynamic shared memory\)$"),
])
def test_an_out_of_bounds_shared_index_is_an_error_naming_kernel_array_and_index(cxx, name, block, good_block,
                                                                                 shared_mem, message):
    kernels = compiled(OUT_OF_BOUNDS, cxx, "oob")
    out = np.full(64, np.nan, np.float32)
    with pytest.raises(EmulatorError, match=message):
        kernels[name]((1, 1, 1), (block, 1, 1), (out,), shared_mem=shared_mem)
    kernels[name]((1, 1, 1), (good_block, 1, 1), (out,), shared_mem=shared_mem)  # in bounds it runs, after the error


def test_the_same_kernels_in_bounds_do_what_they_say(cxx):
    kernels = compiled(OUT_OF_BOUNDS, cxx, "oob")
    out = np.full(64, np.nan, np.float32)
    kernels["helper_oob"]((1, 1, 1), (16, 1, 1), (out,))
    assert_equal(out[:16], 3.0)
    assert_equal(out[16:], np.nan)
    kernels["dynamic_oob"]((1, 1, 1), (32, 1, 1), (out,), shared_mem=128)
    assert_equal(out[:32], 1.0)


# ---------------------------------------------------------------------------------------------
# Barriers and warp calls that not every thread reaches: errors, and the emulator goes on
# ---------------------------------------------------------------------------------------------

DIVERGENT = r"""
extern "C" __global__ void half_barrier(float* x) {
    if (threadIdx.x < 16) __syncthreads();
    x[threadIdx.x] = 1.0f;
}

extern "C" __global__ void two_barriers(float* x) {
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    x[threadIdx.x] = 1.0f;
}

extern "C" __global__ void half_shuffle(float* x) {
    float v = x[threadIdx.x];
    if (threadIdx.x % 32 < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
    x[threadIdx.x] = v;
}

extern "C" __global__ void mixed_shuffles(float* x) {
    float v = x[threadIdx.x];
    if (threadIdx.x % 2) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else v = __shfl_down_sync(0xffffffffu, v, 1);
    x[threadIdx.x] = v;
}

extern "C" __global__ void shuffle_past_a_short_warp(float* x) {
    x[threadIdx.x] = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 8);  // 40 threads: lanes 8.. of warp 1 are missing
}

extern "C" __global__ void shuffle_against_barrier(float* x) {
    float v = x[threadIdx.x];
    if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else __syncthreads();
    x[threadIdx.x] = v;
}

extern "C" __global__ void bad_width(float* x) { x[threadIdx.x] = __shfl_sync(0xffffffffu, x[threadIdx.x], 0, 12); }
"""


@pytest.mark.parametrize("name, block, message", [
    ("half_barrier", 64, r"^kernel half_barrier block \(0,0,0\): 16 of 64 threads wait at __syncthreads "
                         r"\(line {half}\), but thread \(16,0,0\) exited without reaching it$"),
    ("two_barriers", 8, r"^kernel two_barriers block \(0,0,0\): thread \(0,0,0\) waits at __syncthreads on line "
                        r"{even}, thread \(1,0,0\) at the one on line {odd}$"),
    ("half_shuffle", 64, r"^kernel half_shuffle block \(0,0,0\): warp 0: lane 0 is in __shfl_down_sync\(mask "
                         r"0xffffffff, width 32\) of 4 bytes, but lane 16 of its mask exited$"),
    ("mixed_shuffles", 32, r"warp 0: lane 0 is in __shfl_down_sync\(.*\) of 4 bytes, but lane 1 of its mask is in "
                           r"__shfl_xor_sync"),
    ("shuffle_past_a_short_warp", 40, r"warp 1: lane 0's __shfl_down_sync\(mask 0xffffffff\) reads lane 8, which "
                                      r"does not exist"),
    ("shuffle_against_barrier", 64, r"warp 0: lane 0 is in __shfl_xor_sync\(mask 0xffffffff, width 32\) of 4 "
                                    r"bytes, but lane 16 of its mask waits at __syncthreads \(line {against}\)$"),
    ("bad_width", 32, r"thread \(\d+,0,0\): __shfl_sync with width 12: it must be a power of 2 from 1 to 32$"),
])
def test_a_barrier_or_warp_call_not_every_thread_reaches_is_an_error(cxx, name, block, message):
    kernels = compiled(DIVERGENT, cxx, "divergent")
    branch = line_of(DIVERGENT, "if (threadIdx.x % 2) {")
    message = message.format(half=line_of(DIVERGENT, "threadIdx.x < 16) __syncthreads"), odd=branch + 1,
                             even=branch + 3, against=line_of(DIVERGENT, "else __syncthreads"))
    x = np.arange(block, dtype=np.float32)
    with pytest.raises(EmulatorError, match=message) as e:
        kernels[name]((1, 1, 1), (block, 1, 1), (x,))
    assert isinstance(e.value, GpubpError) and "\n" not in str(e.value)
    # The library and the backend are still usable afterwards.
    mm = compiled(MATMUL, cxx, "matmul")["matmul"]
    A, B = matrices(5, 20, 19)
    assert_close(run_matmul(mm, A, B, 0), A.astype(np.float64) @ B, atol=1e-5, rtol=1e-5, what="after the error")
    y = np.zeros(16, np.float32)
    kernels["half_barrier"]((1, 1, 1), (16, 1, 1), (y,))  # with 16 threads every one reaches it
    assert_equal(y, 1.0)
    be = get_backend("emulated")
    Z = np.zeros((3, 4), np.float32)
    be.kernel("bias_sigmoid", np.float32)(Z.size, Z, np.zeros(4, np.float32), 3, 4)
    assert_equal(Z, 0.5)


# ---------------------------------------------------------------------------------------------
# Warp shuffles: every type, widths below 32, and a block reduction
# ---------------------------------------------------------------------------------------------

SHUFFLES = r"""
template <typename T>
__device__ void shuffles(const T* x, T* out, int width) {
    unsigned t = threadIdx.x, n = blockDim.x;
    T v = x[t];
    out[t] = __shfl_down_sync(0xffffffffu, v, 3, width);
    out[n + t] = __shfl_up_sync(0xffffffffu, v, 5, width);
    out[2 * n + t] = __shfl_xor_sync(0xffffffffu, v, 12, width);
    out[3 * n + t] = __shfl_sync(0xffffffffu, v, 7, width);
    out[4 * n + t] = __shfl_sync(0xffffffffu, v, t % 32 + 1);  // default width 32; lane 31 reads lane 0
}
extern "C" __global__ void shuffles_f32(const float* x, float* out, int width) { shuffles(x, out, width); }
extern "C" __global__ void shuffles_f64(const double* x, double* out, int width) { shuffles(x, out, width); }
extern "C" __global__ void shuffles_i32(const int* x, int* out, int width) { shuffles(x, out, width); }
extern "C" __global__ void shuffles_u32(const unsigned* x, unsigned* out, int width) { shuffles(x, out, width); }
extern "C" __global__ void shuffles_i64(const long long* x, long long* out, int width) { shuffles(x, out, width); }
"""
SHUFFLE_TYPES = {"f32": np.float32, "f64": np.float64, "i32": np.int32, "u32": np.uint32, "i64": np.int64}


def expected_shuffles(x, width):
    """CUDA's documented results, lane by lane (independent of the emulator's PTX-style formulas)."""
    n = len(x)
    out = np.empty((5, n), x.dtype)
    for t in range(n):
        lane, warp = t % 32, t - t % 32
        seg = lane - lane % width
        src = lane + 3 if lane % width + 3 < width else lane  # down: past the segment keeps its own
        out[0, t] = x[warp + src]
        src = lane - 5 if lane % width >= 5 else lane  # up
        out[1, t] = x[warp + src]
        src = lane ^ 12 if (lane ^ 12) < seg + width else lane  # xor: earlier segments read, later keep own
        out[2, t] = x[warp + src]
        out[3, t] = x[warp + seg + 7 % width]  # broadcast of lane 7 of each segment
        out[4, t] = x[warp + (lane + 1) % 32]
    return out


@pytest.mark.parametrize("width", [32, 16, 8])
@pytest.mark.parametrize("suffix", list(SHUFFLE_TYPES))
def test_warp_shuffles_move_every_type_as_cuda_documents(cxx, suffix, width):
    kernel = compiled(SHUFFLES, cxx, "shuffles")[f"shuffles_{suffix}"]
    dtype = SHUFFLE_TYPES[suffix]
    rng = np.random.default_rng(width)
    x = (rng.standard_normal(96) * 1e3).astype(dtype) if dtype in (np.float32, np.float64) else \
        rng.integers(-2**30 if dtype != np.uint32 else 0, 2**30, 96).astype(dtype)
    if dtype == np.int64:
        x *= 2**20  # values that need all 8 bytes
    out = np.zeros((5, 96), dtype)
    kernel((1, 1, 1), (96, 1, 1), (x, out, np.int32(width)), seed=width)
    assert_equal(out, expected_shuffles(x, width))


REDUCE = r"""
template <typename T>
__device__ T warp_sum_down(T v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    return __shfl_sync(0xffffffffu, v, 0);  // lane 0 holds the sum: every lane gets it
}

template <typename T>
__device__ T warp_sum_xor(T v) {
    for (int mask = 16; mask > 0; mask /= 2) v += __shfl_xor_sync(0xffffffffu, v, mask);
    return v;  // every lane holds the sum
}

// block_sums[b] = sum of the elements block b visits (grid-stride); warp_sums[i] = its warp's sum.
template <typename T>
__device__ void block_sum(const T* x, T* block_sums, T* warp_sums, long long n) {
    __shared__ T partial[32];
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    T v = 0;
    for (long long j = i; j < n; j += (long long)blockDim.x * gridDim.x) v += x[j];
    v = warp_sum_down(v);
    warp_sums[i] = v;
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = warp_sum_xor(lane < blockDim.x / 32 ? partial[lane] : T(0));
        if (lane == 0) block_sums[blockIdx.x] = v;
    }
}

extern "C" __global__ void block_sum_f64(const double* x, double* b, double* w, long long n) { block_sum(x, b, w, n); }
extern "C" __global__ void block_sum_i32(const int* x, int* b, int* w, long long n) { block_sum(x, b, w, n); }
"""


@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_a_block_reduction_with_shuffles_equals_numpys_sum(cxx, dtype):
    name = "block_sum_f64" if dtype == np.float64 else "block_sum_i32"
    kernel = compiled(REDUCE, cxx, "reduce")[name]
    rng = np.random.default_rng(3)
    n, grid, block = 10_007, 5, 256
    x = rng.standard_normal(n) if dtype == np.float64 else rng.integers(-1000, 1000, n).astype(np.int32)
    block_sums = np.full(grid, -7, dtype)
    warp_sums = np.full(grid * block, -7, dtype)
    kernel((grid, 1, 1), (block, 1, 1), (x, block_sums, warp_sums, np.int64(n)), seed=9)
    per_thread = np.zeros(grid * block)
    np.add.at(per_thread, np.arange(n) % (grid * block), x)
    warps = per_thread.reshape(-1, 32).sum(axis=1)
    assert_close(warp_sums, np.repeat(warps, 32), atol=1e-12, rtol=1e-12, what="warp sums broadcast to every lane")
    assert_close(block_sums, warps.reshape(grid, -1).sum(axis=1), atol=1e-12, rtol=1e-12, what="block sums")
    assert_close(block_sums.sum(), x.astype(np.float64).sum(), atol=1e-9, rtol=1e-12, what="total")


# ---------------------------------------------------------------------------------------------
# Atomics across blocks, and a shared-memory histogram
# ---------------------------------------------------------------------------------------------

ATOMICS = r"""
template <typename T>
__device__ void atomic_sum(const T* x, T* total, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)blockDim.x * gridDim.x)
        atomicAdd(total, x[i]);
}
extern "C" __global__ void sum_f32(const float* x, float* t, long long n) { atomic_sum(x, t, n); }
extern "C" __global__ void sum_f64(const double* x, double* t, long long n) { atomic_sum(x, t, n); }
extern "C" __global__ void sum_i32(const int* x, int* t, long long n) { atomic_sum(x, t, n); }
extern "C" __global__ void sum_u32(const unsigned* x, unsigned* t, long long n) { atomic_sum(x, t, n); }
extern "C" __global__ void sum_u64(const unsigned long long* x, unsigned long long* t, long long n) {
    atomic_sum(x, t, n);
}

// hist[b] = how many labels equal b: a per-block histogram in shared memory, then one add per bin.
extern "C" __global__ void histogram(const int* labels, int* hist, long long n, int bins) {
    __shared__ int local[64];
    for (int b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;
    __syncthreads();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)blockDim.x * gridDim.x)
        atomicAdd(&local[labels[i]], 1);
    __syncthreads();
    for (int b = threadIdx.x; b < bins; b += blockDim.x) atomicAdd(&hist[b], local[b]);
}
"""


@pytest.mark.parametrize("suffix, dtype", [("f32", np.float32), ("f64", np.float64), ("i32", np.int32),
                                           ("u32", np.uint32), ("u64", np.uint64)])
def test_atomic_add_across_blocks_equals_numpys_sum(cxx, suffix, dtype):
    kernel = compiled(ATOMICS, cxx, "atomics")[f"sum_{suffix}"]
    rng = np.random.default_rng(4)
    n = 5_003
    x = rng.random(n).astype(dtype) if dtype in (np.float32, np.float64) else rng.integers(0, 1000, n).astype(dtype)
    if dtype == np.uint64:
        x += np.uint64(2**40)  # beyond 32 bits
    total = np.zeros(1, dtype)
    kernel((7, 1, 1), (128, 1, 1), (x, total, np.int64(n)), seed=2)
    exact = x.astype(np.float64).sum() if dtype in (np.float32, np.float64) else int(x.astype(object).sum())
    if dtype == np.float32:
        assert_close(total, [exact], rtol=1e-4, atol=0, what="float atomicAdd sum")
    elif dtype == np.float64:
        assert_close(total, [exact], rtol=1e-12, atol=0, what="double atomicAdd sum")
    else:
        assert int(total[0]) == exact


def test_a_shared_memory_histogram_with_atomics_equals_numpy(cxx):
    kernel = compiled(ATOMICS, cxx, "atomics")["histogram"]
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 50, 20_011).astype(np.int32)
    hist = np.zeros(50, np.int32)
    kernel((6, 1, 1), (96, 1, 1), (labels, hist, np.int64(labels.size), np.int32(50)))
    assert_equal(hist, np.bincount(labels, minlength=50))


# ---------------------------------------------------------------------------------------------
# Dynamic shared memory sized by the launch; 3-D grids and blocks
# ---------------------------------------------------------------------------------------------

DYNAMIC = r"""
// y = x with each block's stretch reversed, through the launch's dynamic shared memory.
extern "C" __global__ void reverse_blocks(const float* x, float* y, int n) {
    extern __shared__ float stage[];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int rest = n - (int)(blockIdx.x * blockDim.x), last = (rest < (int)blockDim.x ? rest : (int)blockDim.x) - 1;
    if (i < n) stage[threadIdx.x] = x[i];
    __syncthreads();
    if (i < n) y[i] = stage[last - threadIdx.x];
}

// The same through a byte array cast to double, as templated CUDA code declares it.
extern "C" __global__ void reverse_blocks_f64(const double* x, double* y, int n) {
    extern __shared__ unsigned char raw[];
    double* stage = (double*)raw;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int rest = n - (int)(blockIdx.x * blockDim.x), last = (rest < (int)blockDim.x ? rest : (int)blockDim.x) - 1;
    if (i < n) stage[threadIdx.x] = x[i];
    __syncthreads();
    if (i < n) y[i] = stage[last - threadIdx.x];
}
"""


def reversed_blocks(x, block):
    return np.concatenate([c[::-1] for c in np.split(x, range(block, len(x), block))])


@pytest.mark.parametrize("name, dtype", [("reverse_blocks", np.float32), ("reverse_blocks_f64", np.float64)])
def test_dynamic_shared_memory_holds_what_the_launch_gives(cxx, name, dtype):
    kernel = compiled(DYNAMIC, cxx, "dynamic")[name]
    x = np.random.default_rng(6).standard_normal(1000).astype(dtype)
    y = np.full_like(x, np.nan)
    block = 96
    kernel((-(-1000 // block), 1, 1), (block, 1, 1), (x, y, np.int32(1000)), shared_mem=block * x.itemsize)
    assert_equal(y, reversed_blocks(x, block))


GEOMETRY = r"""
// out[thread][k]: blockIdx, threadIdx, blockDim, gridDim (x, y, z each), then the lane-0 linear id
// of its warp; thread = linear block id * threads per block + linear thread id.
extern "C" __global__ void coordinates(long long* out) {
    unsigned t = threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
    unsigned b = blockIdx.x + blockIdx.y * gridDim.x + blockIdx.z * gridDim.x * gridDim.y;
    long long* o = out + 13 * ((long long)b * blockDim.x * blockDim.y * blockDim.z + t);
    dim3 d[4] = {blockIdx, threadIdx, blockDim, gridDim};
    for (int k = 0; k < 4; ++k) { o[3 * k] = d[k].x; o[3 * k + 1] = d[k].y; o[3 * k + 2] = d[k].z; }
    o[12] = __shfl_sync(0xffffffffu, (int)t, 0);
}
"""


@pytest.mark.parametrize("grid, block", [((3, 2, 2), (8, 3, 2)), ((1, 1, 1), (1, 1, 1)), ((2, 3, 1), (4, 4, 4))])
def test_3d_grids_and_blocks_see_their_coordinates(cxx, grid, block):
    kernel = compiled(GEOMETRY, cxx, "geometry")["coordinates"]
    threads, blocks = int(np.prod(block)), int(np.prod(grid))
    out = np.full((blocks * threads, 13), -1, np.int64)
    kernel(grid, block, (out,))
    bz, by, bx, tz, ty, tx = np.meshgrid(*[np.arange(n) for n in (grid[2], grid[1], grid[0], block[2], block[1],
                                                                   block[0])], indexing="ij")
    expected = np.stack([bx, by, bz, tx, ty, tz] + [np.full_like(bx, v) for v in (*block, *grid)], axis=-1)
    expected = expected.reshape(blocks * threads, 12)
    assert_equal(out[:, :12], expected)
    linear = np.arange(blocks * threads) % threads
    assert_equal(out[:, 12], linear - linear % 32)  # warps: 32 consecutive linear ids


# ---------------------------------------------------------------------------------------------
# The source transform, the fast path, the seed, and launch_grid on the backend
# ---------------------------------------------------------------------------------------------

def test_the_shared_rewrite_keeps_lines_and_skips_comments_and_macros():
    code = ('// __shared__ float not_this[4];\n'
            '#define DECLARE __shared__ float nor_this[4];\n'
            '__shared__ float a[4][5], *p, b[2];\n'
            'extern __shared__ __align__(16) double dyn[];\n'
            'volatile __shared__ int flag;\n'
            '__shared__ float\n    split[8];\n')
    out = emulator.emulator_source(code)
    assert out.count("\n") == code.count("\n")
    lines = out.splitlines()
    assert lines[:2] == code.splitlines()[:2]
    assert lines[2] == ('static gpubp_emu::shared_array<float [4][5]> a{"a"}; static float* p; '
                        'static gpubp_emu::shared_array<float [2]> b{"b"};')
    assert lines[3] == 'static const gpubp_emu::dynamic_shared<double> dyn{"dyn"};'
    assert lines[4] == "static volatile int flag;"
    assert lines[5:] == ['static gpubp_emu::shared_array<float [8]> split{"split"};', ""]


def test_only_cooperating_kernels_leave_the_serial_fast_path():
    assert not emulator.cooperative('extern "C" __global__ void k(float* x) { x[0] = 1; } // no __syncthreads')
    assert emulator.cooperative(MATMUL) and emulator.cooperative(ATOMICS) and emulator.cooperative(SHUFFLES)
    assert emulator.cooperative("__device__ void f() { __syncwarp(); }")


def test_the_seed_comes_from_the_environment_and_restarts_the_launch_sequence(monkeypatch):
    monkeypatch.setenv(emulator.SEED_ENV, "0x2a")
    be = emulator.EmulatedBackend()
    assert be.seed == 42
    be.seed = 7
    assert be.seed == 7
    monkeypatch.setenv(emulator.SEED_ENV, "seven")
    with pytest.raises(GpubpError, match="must be an integer"):
        emulator.EmulatedBackend()


def test_launch_grid_checks_and_counts_like_launch():
    be = get_backend("emulated")
    rng = np.random.default_rng(8)
    Z, b = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    expected = Z.astype(np.float64) + b
    with be.counters() as c:
        be.launch_grid("bias_sigmoid_f32", (3, 1, 1), (8, 1, 1), 0, Z, b, 5, 7)  # grid-stride: 24 threads for 35
    assert c.launches == 1
    assert_close(Z, 1 / (1 + np.exp(-expected)), atol=1e-6, rtol=0, what="launch_grid bias_sigmoid")
    bad = [(("grid", (0, 1, 1), (8, 1, 1), 0), "grid .* outside CUDA's limits"),
           (("block", (1, 1, 1), (32, 32, 2), 0), "more than 1024 threads"),
           (("block z", (1, 1, 1), (1, 1, 65), 0), "block .* outside"),
           (("shared", (1, 1, 1), (8, 1, 1), 49153), "shared_mem must be 0 to 49152"),
           (("shared bool", (1, 1, 1), (8, 1, 1), True), "shared_mem must be 0 to 49152"),
           (("shape", (1, 1, 1, 1), (8,), 0), "1 to 3 integers")]
    with be.counters() as c:
        for (_, grid, block, shared), message in bad:
            with pytest.raises(GpubpError, match=message):
                be.launch_grid("bias_sigmoid_f32", grid, block, shared, Z, b, 5, 7)
        with pytest.raises(GpubpError, match="takes 4 arguments"):
            be.launch_grid("bias_sigmoid_f32", (1, 1, 1), (8, 1, 1), 0, Z, b, 5)
    assert c.launches == 0
