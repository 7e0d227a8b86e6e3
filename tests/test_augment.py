"""The counter-based generator (kernels/philox.cuh), inverted dropout's factor, the max-norm kernel and
gpubp.Augment's kernels (kernels/augment.cu): compiled as CuPy compiles them and by nvcc, then run on the
emulated and native backends against the NumPy reference and float64 formulas written here (Random123's
published known answers; SciPy's gaussian_filter and map_coordinates on the same noise and map).

Outputs and workspaces are poisoned (NaN) before the kernels write them; image shapes and row counts
are not multiples of anything (a pass of 5 images over 13 rows, 9 x 6 images whose height is not a
multiple of the generator's 4 words, 20 x 37 images wider than the blur's 32-column rows and than two of
the native resampling's 16-pixel vectors).
"""

import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_close, assert_differs, assert_equal, backends
from test_kernels import cupy_options, need_nvrtc

from gpubp import Augment, reference
from gpubp.augment import AugmentPlan, scipy_distort
from gpubp.backends import emulated as E
from gpubp.backends import get_backend
from gpubp.backends import kernel as K
from gpubp.errors import GpubpError

DTYPES = [np.float32, np.float64]
HOST_BACKENDS = ["emulated", "native"]
KERNEL_BACKENDS = backends(lambda b: b.compiles_kernels)  # the backends that run our CUDA
# Random123's kat_vectors, "philox4x32 10": counter (4 words), key (2 words) -> the four words
KNOWN_ANSWERS = [
    ([0x00000000, 0x00000000, 0x00000000, 0x00000000], [0x00000000, 0x00000000],
     [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF], [0xFFFFFFFF, 0xFFFFFFFF],
     [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]
ELASTIC = dict(shift=2.5, rotate=20.0, scale=0.2, shear=12.0, elastic_alpha=34.0, elastic_sigma=4.0)

# A probe for the header's functions that no kernel of ours calls yet (dropout lives in the layer
# kernels' epilogues once the routes use it): the same text NVRTC, nvcc and the emulator compile.
PROBE = (K.kernel_dir() / "philox.cuh").read_text() + r"""
extern "C" __global__ void philox_words(unsigned int* __restrict__ out, const unsigned int* __restrict__ counters,
                                        const unsigned int* __restrict__ keys, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const Philox4 r = gpubp_philox4x32_10(
            gpubp_philox_counter(counters[4 * i], counters[4 * i + 1], counters[4 * i + 2], counters[4 * i + 3]),
            keys[2 * i], keys[2 * i + 1]);
        for (int j = 0; j < 4; ++j) out[4 * i + j] = r.w[j];
    }
}
#define GPUBP_PROBE_DROPOUT(NAME, T)                                                                                  \
    extern "C" __global__ void NAME(T* __restrict__ out, long long n, unsigned long long seed, unsigned int epoch, \
                                    unsigned int step, unsigned int layer, T p) {                               \
        for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;                              \
             i += (long long)blockDim.x * gridDim.x)                                                             \
            out[i] = gpubp_dropout_factor<T>(seed, epoch, step, layer, (unsigned long long)i, p);                \
    }
GPUBP_PROBE_DROPOUT(dropout_factors_f32, float)
GPUBP_PROBE_DROPOUT(dropout_factors_f64, double)
"""


@pytest.fixture(scope="module")
def probe():
    """The probe's kernels on the emulator: name -> callable(grid, block, args)."""
    lib = E.build_code(PROBE, E.find_compiler(), "philox_probe")
    return {n: E.Kernel(lib, n) for n in ("philox_words", "dropout_factors_f32", "dropout_factors_f64")}


def launch(kernel, n, *args):
    kernel((max(1, min(-(-n // 256), 16)), 1, 1), (256, 1, 1), args)


# ---------------------------------------------------------------------------------------------
# Philox4x32-10
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_numpy_philox_gives_random123s_known_answers(counter, key, expected):
    assert reference.philox4x32_10(counter, key).tolist() == expected


def test_kernel_philox_gives_random123s_known_answers(probe):
    counters = np.array([c for c, _, _ in KNOWN_ANSWERS], np.uint32)
    keys = np.array([k for _, k, _ in KNOWN_ANSWERS], np.uint32)
    out = np.full((3, 4), 0xDEADBEEF, np.uint32)
    launch(probe["philox_words"], 3, out, counters, keys, np.int64(3))
    assert out.tolist() == [e for _, _, e in KNOWN_ANSWERS]


@pytest.mark.parametrize("n", [1, 255, 257, 10_007])
def test_kernel_philox_matches_numpy_at_awkward_sizes(probe, n):
    """Random counters and keys, every word poisoned first; the NumPy reference is vectorised over them."""
    rng = np.random.default_rng(n)
    counters = rng.integers(0, 2**32, (n, 4), dtype=np.uint64).astype(np.uint32)
    keys = rng.integers(0, 2**32, (n, 2), dtype=np.uint64).astype(np.uint32)
    counters[0] = 0xFFFFFFFF  # carries and wrap-arounds in every word
    out = np.full((n, 4), 0xDEADBEEF, np.uint32)
    launch(probe["philox_words"], n, out, counters, keys, np.int64(n))
    assert_equal(out, reference.philox4x32_10(counters, keys))


def test_uniforms_are_exact_symmetric_and_in_range():
    words = np.array([0, 0xFF, 0x100, 0x7FFFFFFF, 0x80000000, 0xFFFFFF00, 0xFFFFFFFF], np.uint32)
    u01 = reference.uniform01(words, np.float64)
    pm1 = reference.uniform_pm1(words, np.float64)
    assert u01.tolist() == [(int(w) >> 8) / 2**24 for w in words]
    assert pm1.tolist() == [(2 * (int(w) >> 8) + 1 - 2**24) / 2**24 for w in words]
    assert u01.min() == 0 and u01.max() < 1 and -1 < pm1.min() and pm1.max() < 1
    assert pm1[0] == -pm1[-1]  # symmetric about 0
    assert_equal(reference.uniform_pm1(words, np.float32), pm1)  # float32 holds them exactly


# ---------------------------------------------------------------------------------------------
# Inverted dropout's factor
# ---------------------------------------------------------------------------------------------

def dropout64(seed, epoch, step, layer, n, p, dtype):
    """The documented mapping, element by element: word e mod 4 of Philox at (e div 4, step, epoch,
    1 + 256 layer) under the seed's two words; kept when its top 24 bits / 2^24 < 1 - p (in dtype)."""
    dt = np.dtype(dtype).type
    out = np.empty(n)
    for e in range(n):
        word = reference.philox4x32_10([e // 4, step, epoch, 1 + 256 * layer], [seed % 2**32, seed >> 32])[e % 4]
        out[e] = float(dt(1) / (dt(1) - dt(p))) if dt((int(word) >> 8) / 2**24) < dt(1) - dt(p) else 0.0
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("n", [1, 257, 10_007])
def test_dropout_factor_kernel_numpy_and_the_mapping_agree(probe, dtype, n):
    seed, epoch, step, layer, p = 2**40 + 12345, 3, 17, 2, 0.3
    out = np.full(n, np.nan, dtype)
    sfx = K.suffix(dtype)
    launch(probe["dropout_factors" + sfx], n, out, np.int64(n), np.uint64(seed), np.uint32(epoch), np.uint32(step),
           np.uint32(layer), np.dtype(dtype).type(p))
    ref = reference.dropout_factor(seed, epoch, step, layer, np.arange(n), p, dtype)
    assert_equal(out, ref)  # bit for bit: the same integers, the same comparison in dtype
    m = min(n, 300)
    assert_equal(ref[:m], dropout64(seed, epoch, step, layer, m, p, dtype))


def test_dropout_keeps_one_minus_p_and_scales_to_mean_one():
    n, p = 200_000, 0.5
    f = reference.dropout_factor(7, 0, 0, 1, np.arange(n), p, np.float32)
    kept = np.count_nonzero(f)
    assert abs(kept - n * (1 - p)) < 5 * math.sqrt(n * p * (1 - p))  # five standard deviations
    assert set(np.unique(f).tolist()) == {0.0, 2.0}
    assert abs(f.mean() - 1) < 5 * math.sqrt(p / (1 - p) / n)
    assert_equal(reference.dropout_factor(7, 0, 0, 1, np.arange(1000), 0.0, np.float32), 1)  # p = 0 keeps all


def test_dropout_masks_differ_by_seed_epoch_step_and_layer():
    base = (5, 1, 2, 0)
    masks = {}
    for which, change in enumerate([(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]):
        args = [b + c for b, c in zip(base, change)]
        masks[which] = reference.dropout_factor(*args, np.arange(4096), 0.5, np.float64)
    for a in masks:
        for b in masks:
            if a < b:
                assert np.mean(masks[a] == masks[b]) < 0.6  # independent masks agree on about half


def test_probe_compiles_with_nvrtc_as_cupy_does_and_nvcc_without_spills(tmp_path):
    nvrtc = need_nvrtc()
    for arch in (75, 80, 90):
        prog = nvrtc.createProgram(PROBE, "philox_probe.cu", [], [])
        try:
            nvrtc.compileProgram(prog, cupy_options(f"-arch=sm_{arch}"))
            assert len(nvrtc.getCUBIN(prog)) > 1000
        finally:
            nvrtc.destroyProgram(prog)
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH (NVRTC compiled the probe)")
    (tmp_path / "probe.cu").write_text(PROBE)
    p = subprocess.run(["nvcc", "-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v", "-c", "-o", os.devnull,
                        str(tmp_path / "probe.cu")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", p.stderr)
    assert len(spills) == 3 and all(s == ("0", "0") for s in spills), p.stderr


# ---------------------------------------------------------------------------------------------
# Max-norm
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(1, 1), (255, 17), (257, 784), (1000, 3)])
def test_max_norm_matches_float64(backend, dtype, shape):
    """Rows above c land on the sphere of radius c; rows at or below c are untouched, bit for bit."""
    rng = np.random.default_rng(shape[0])
    rows, cols = shape
    W = rng.standard_normal(shape) * rng.choice([0.01, 1.0, 30.0], (rows, 1))
    W.reshape(-1)[rng.integers(0, W.size, max(1, W.size // 50))] = 1000.0
    W[::7] *= 0  # a few zero rows: norm 0 <= c
    c = 2.5
    if rows > 2:
        W[1] = 0.0
        W[1, 0] = c  # exactly on the sphere: kept
    Wt = np.asarray(W, dtype)
    w64 = Wt.astype(np.float64)
    norms = np.sqrt((w64 ** 2).sum(axis=1, keepdims=True))
    expected = np.where(norms > c, w64 * (c / np.where(norms > 0, norms, 1)), w64)
    be = get_backend(backend)
    Wd = be.to_device(Wt, dtype)
    be.kernel("max_norm", dtype)(rows, Wd, rows, cols, c)
    got = be.to_host(Wd)
    atol, rtol = K.tolerance("max_norm.cu", dtype)
    assert_close(got, expected, atol=atol, rtol=rtol, what=f"max_norm {shape} on {backend}")
    inside = (norms <= c)[:, 0]
    assert_equal(got[inside], Wt[inside])
    assert np.all(np.sqrt((got.astype(np.float64) ** 2).sum(axis=1)) <= c * (1 + 4 * rtol))


# ---------------------------------------------------------------------------------------------
# Augment: the kernels one by one, against float64 formulas written here
# ---------------------------------------------------------------------------------------------

def key_of(seed, epoch):
    return np.array([seed % 2**32, seed >> 32, epoch], np.uint32)


def noise64(key, rows, row0, h, w):
    """The elastic noise by the documented mapping, pixel by pixel: field f, pixel (y, x) of image row is
    word y mod 4 of Philox at ((f w + x) ceil(h/4) + y div 4, row, epoch, 2)."""
    quads = -(-h // 4)
    out = np.empty((rows, 2, h, w))
    for r in range(rows):
        for f in range(2):
            for x in range(w):
                for q in range(quads):
                    words = reference.philox4x32_10([(f * w + x) * quads + q, row0 + r, key[2], 2], key[:2])
                    for j in range(4):
                        if 4 * q + j < h:
                            out[r, f, 4 * q + j, x] = ((int(words[j]) >> 8) * 2 + 1 - 2**24) / 2**24
    return out


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("hw, sigma", [((28, 28), 4.0), ((9, 6), 1.5), ((5, 7), 0.0), ((36, 41), 5.0), ((8, 3), 3.0),
                                       ((8, 30), 0.0)])
def test_field_kernel_is_the_blurred_noise(backend, dtype, hw, sigma):
    """augment_field against SciPy's gaussian_filter (zero outside, truncated at the same radius) of the
    noise rebuilt pixel by pixel; workspaces poisoned, 3 images from row 41. The sizes: rows and columns
    past the blur's register blocks (4 x 32 on a CPU) and past its 32-column rows (41), a radius clipped by
    the image (8 x 3), heights of whole and partial Philox words, and sigma 0: the noise itself, exactly
    (60 calls a field at 8 x 30: whole and partial groups of the 16 calls AVX-512 draws at once)."""
    from scipy.ndimage import gaussian_filter

    h, w = hw
    aug = Augment(elastic_alpha=1.0, elastic_sigma=sigma, shape=hw)
    R = aug.radius(h, w) if sigma else 0
    rows, row0, key = 3, 41, key_of(2**33 + 9, 4)
    be = get_backend(backend)
    D = be.to_device(np.full((rows, 2, h, w), np.nan), dtype)
    Tw = be.to_device(np.full((rows, 2, reference.augment_field_work(h, w)), np.nan), dtype)
    be.kernel("augment_field", dtype)(rows * 2, D, Tw, be.to_device(key, np.uint32),
                                      be.to_device(aug.band(h, w), dtype), rows, row0, h, w, R)
    noise = noise64(key, rows, row0, h, w)
    expected = np.array([[gaussian_filter(noise[r, f], sigma, mode="constant", radius=R) if sigma else noise[r, f]
                          for f in range(2)] for r in range(rows)])
    tol = 1e-6 if dtype == np.float32 else 1e-14
    assert_close(be.to_host(D), expected, atol=tol, what=f"elastic field on {backend}")
    if not sigma:
        assert_equal(be.to_host(D), expected.astype(dtype))


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_affine_kernel_is_the_documented_map(backend, dtype):
    """augment_affine's (a, b, ex, c, d, ey) against the map composed here in float64: (1/s) R(theta) Sh(phi)
    about the centre, then the shift; 300 images from row 7, output poisoned."""
    h, w, rows, row0 = 9, 6, 300, 7
    rot, scale, shear, shift = math.radians(30), 0.25, math.radians(20), 3.0
    key = key_of(99, 2)
    be = get_backend(backend)
    A = be.to_device(np.full((rows, 6), np.nan), dtype)
    be.kernel("augment_affine", dtype)(rows, A, be.to_device(key, np.uint32), rows, row0, h, w, rot, scale, shear,
                                       shift)
    expected = np.empty((rows, 6))
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    for r in range(rows):
        u = [reference.uniform_pm1(reference.philox4x32_10([j, row0 + r, 2, 3], key[:2]), np.float64) for j in (0, 1)]
        theta, s, phi = rot * u[0][0], 1 + scale * u[0][1], shear * u[0][2]
        M = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]) \
            @ np.array([[1, math.tan(phi)], [0, 1]]) / s
        e = centre + shift * np.array([u[0][3], u[1][0]]) - M @ centre
        expected[r] = [M[0, 0], M[0, 1], e[0], M[1, 0], M[1, 1], e[1]]
    tol = 2e-6 if dtype == np.float32 else 1e-14
    assert_close(be.to_host(A), expected, atol=tol, what=f"affine maps on {backend}")


# ---------------------------------------------------------------------------------------------
# Augment: whole distortions
# ---------------------------------------------------------------------------------------------

def images(rng, rows, h, w, dtype):
    """Digit-like images: a bright blob on 0, with exact 0s and 1s."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((rows, h * w))
    for r in range(rows):
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        out[r] = np.clip(1.5 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (0.1 * h * w)), 0, 1).reshape(-1)
    out[rng.random(out.shape) < 0.05] = 1.0
    return out.astype(dtype)


def poisoned_plan(aug, be, dtype, h, w, rows_per_pass):
    plan = AugmentPlan(aug, be, dtype, h, w, rows_per_pass)
    for a in (plan.affine, plan.padded, plan.work, plan.field):
        a[...] = np.nan
    return plan


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("hw, rows, per_pass", [((28, 28), 7, 4096), ((9, 6), 13, 5), ((20, 37), 6, 4)])
@pytest.mark.parametrize("params", [ELASTIC, dict(rotate=30.0, shift=1.5), dict(elastic_alpha=8.0, elastic_sigma=0.8)],
                         ids=["affine+elastic", "affine", "elastic"])
def test_every_backend_makes_the_same_images_as_the_float64_formula(dtype, hw, rows, per_pass, params):
    """Emulated and native (poisoned workspaces and output, passes not dividing the rows) == the NumPy
    reference (float32 1e-5) == SciPy per image in float64 (the header's tolerance)."""
    h, w = hw
    aug = Augment(**params, shape=hw)
    X = images(np.random.default_rng(rows), rows, h, w, dtype)
    seed, epoch = 2**35 + 3, 5
    ref = aug(X, seed=seed, epoch=epoch, backend="numpy")
    atol, _ = K.tolerance("augment.cu", dtype)
    assert_close(ref, scipy_distort(X, aug, seed, epoch), atol=atol, what="numpy reference vs scipy")
    for name in HOST_BACKENDS:
        be = get_backend(name)
        plan = poisoned_plan(aug, be, dtype, h, w, per_pass)
        out = np.full_like(X, np.nan)
        plan.set_epoch(seed, epoch)
        plan.run(X, out)
        assert_close(out, ref, atol=1e-5 if dtype == np.float32 else 1e-12, what=f"{name} vs numpy")
    assert_differs(ref, X)


SPLIT = """
import sys
import numpy as np
from gpubp import Augment
X = np.load(sys.argv[1])
np.save(sys.argv[2], Augment(**eval(sys.argv[3]))(X, seed=7, epoch=3, backend="native"))
"""


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_native_images_do_not_depend_on_how_the_cores_split_them(tmp_path, dtype):
    """The native backend splits an augmentation's images between its helper threads (augment.cu's
    augment_each; OMP_NUM_THREADS threads in all, started once a process): one thread and two make the
    same images, bit for bit, and the reference's."""
    X = images(np.random.default_rng(4), 61, 28, 28, dtype)
    np.save(tmp_path / "X.npy", X)
    out = {}
    for threads in ("1", "2"):
        path = tmp_path / f"{threads}.npy"
        res = subprocess.run([sys.executable, "-c", SPLIT, str(tmp_path / "X.npy"), str(path), repr(ELASTIC)],
                             env={**os.environ, "OMP_NUM_THREADS": threads}, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        out[threads] = np.load(path)
    assert_equal(out["2"], out["1"])
    ref = Augment(**ELASTIC)(X, seed=7, epoch=3, backend="numpy")
    assert_close(out["2"], ref, atol=1e-5 if dtype == np.float32 else 1e-12, what="native (2 threads) vs numpy")


@pytest.mark.parametrize("backend", ["numpy", *HOST_BACKENDS])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_no_distortion_returns_the_input_exactly(backend, dtype):
    X = images(np.random.default_rng(1), 11, 28, 28, dtype)
    out = Augment()(X, seed=3, epoch=9, backend=backend)
    assert out is not X and out.dtype == X.dtype
    assert_equal(out, X)
    # and the kernels themselves, asked for no distortion, sample every pixel where it was
    be = get_backend(backend)
    plan = poisoned_plan(Augment(), be, dtype, 28, 28, 4)
    out = np.full_like(X, np.nan)
    plan.set_epoch(3, 9)
    plan.run(X, out)
    assert_equal(out, X)


@pytest.mark.parametrize("backend", ["numpy", *HOST_BACKENDS])
def test_values_stay_in_the_unit_interval_under_extreme_distortions(backend):
    X = images(np.random.default_rng(2), 40, 28, 28, np.float32)
    X[:5] = 1.0  # all-white images: bilinear weights that round above 1 would show
    aug = Augment(shift=40, rotate=180, scale=0.95, shear=85, elastic_alpha=1000, elastic_sigma=0.5)
    out = aug(X, seed=1, epoch=0, backend=backend)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_epochs_and_seeds_draw_anew_and_passes_do_not_matter():
    X = images(np.random.default_rng(3), 9, 28, 28, np.float32)
    aug = Augment(**ELASTIC)
    a = aug(X, seed=1, epoch=0, backend="native")
    assert_equal(a, aug(X, seed=1, epoch=0, backend="native"))  # reproducible
    assert np.abs(a - aug(X, seed=1, epoch=1, backend="native")).max() > 0.1
    assert np.abs(a - aug(X, seed=2, epoch=0, backend="native")).max() > 0.1
    plan = AugmentPlan(aug, get_backend("native"), np.float32, 28, 28, rows_per_pass=2)
    out = np.empty_like(X)
    plan.set_epoch(1, 0)
    plan.run(X, out)
    assert_equal(out, a)  # image r draws by its row, whatever the pass


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_an_epoch_asks_nothing_of_the_host_and_replays_as_a_graph(backend):
    """Inside run(): kernel launches only (no allocation, copy or wait), so it can be captured; the
    replayed graph reads the key uploaded before each replay."""
    be = get_backend(backend)
    X = images(np.random.default_rng(4), 10, 28, 28, np.float32)
    aug = Augment(**ELASTIC)
    plan = aug.plan(be, np.float32, 28, 28, rows_per_pass=4)
    out = be.empty(X.shape, np.float32)
    with be.counters() as c:
        plan.run(X, out)
    assert (c.allocs, c.h2d, c.d2h, c.syncs) == (0, 0, 0, 0)
    if backend == "emulated" or be.graphs_by_default:
        assert c.launches == 4 * 3  # three passes of 4, 4, 2 images
    with be.capture() as graph:
        plan.run(X, out)
    for epoch in (3, 4):
        out[...] = np.nan
        plan.set_epoch(11, epoch)
        graph.launch()
        assert_equal(out, aug(X, seed=11, epoch=epoch, backend=backend))


def test_the_cupy_backend_returns_device_arrays_with_the_same_images(cupy_be):
    be, fake = cupy_be
    X = images(np.random.default_rng(5), 6, 28, 28, np.float32)
    out = Augment(**ELASTIC)(X, seed=4, epoch=2, backend=be)
    assert isinstance(out, fake.ndarray)
    assert_close(be.to_host(out), Augment(**ELASTIC)(X, seed=4, epoch=2, backend="numpy"), atol=1e-5,
                 what="cupy (stand-in) vs numpy")


@pytest.mark.gpu
def test_cupy_on_a_gpu_makes_the_numpy_images():
    be = get_backend("cupy")
    X = images(np.random.default_rng(6), 300, 28, 28, np.float32)
    got = be.to_host(Augment(**ELASTIC)(be.to_device(X), seed=4, epoch=2, backend=be))
    assert_close(got, Augment(**ELASTIC)(X, seed=4, epoch=2, backend="numpy"), atol=1e-5, what="cupy vs numpy")


@pytest.mark.parametrize("kwargs, needle", [
    (dict(rotate=-1), "rotate must be from 0 to 180"),
    (dict(scale=1.0), "scale must be from 0 to 1 (excluded)"),
    (dict(shear=89), "shear must be from 0 to 89 (excluded)"),
    (dict(elastic_alpha=float("nan")), "elastic_alpha must be a finite number"),
    (dict(shift="2"), "shift must be a finite number"),
    (dict(shape=(28,)), "shape must be (height, width)"),
])
def test_bad_parameters_say_what_is_wrong(kwargs, needle):
    with pytest.raises(GpubpError, match=re.escape(needle)):
        Augment(**kwargs)


def test_bad_calls_say_what_is_wrong():
    aug = Augment(rotate=10)
    with pytest.raises(GpubpError, match="not square images"):
        aug(np.zeros((2, 30), np.float32))
    with pytest.raises(GpubpError, match="float32 or float64"):
        aug(np.zeros((2, 784), np.uint8))
    with pytest.raises(GpubpError, match="seed must be an integer from 0 to 2\\^64 - 1"):
        aug(np.zeros((2, 784), np.float32), seed=-1)
    with pytest.raises(GpubpError, match="epoch must be an integer"):
        aug(np.zeros((2, 784), np.float32), epoch=2**32)
    with pytest.raises(GpubpError, match="no augmentation preset named 'elastik'"):
        Augment.preset("elastik")
    assert Augment.preset("simard-elastic", rotate=5.0) == Augment(elastic_alpha=34, elastic_sigma=4, rotate=5)


# ---------------------------------------------------------------------------------------------
# gpubp samples and the --augment flags
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def square_dir(tmp_path_factory):
    """An MNIST-format directory of 6 x 6 images (load with --no-verify)."""
    from helpers import write_mnist_like

    return str(write_mnist_like(tmp_path_factory.mktemp("square"), n_train=10_020, n_test=10, shape=(6, 6)))


def test_samples_writes_originals_beside_their_distortions(capsys, tmp_path, square_dir):
    from helpers import run_cli

    out = tmp_path / "samples.png"
    code, stdout, err = run_cli(capsys, "samples", "--data-dir", square_dir, "--no-verify", "--backend", "numpy",
                                "--augment", "simard-affine", "--rotate", "10", "--count", "3", "--epochs", "2",
                                "-o", str(out))
    assert code == 0, err
    assert f"wrote the picture {out}" in stdout
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert list(tmp_path.iterdir()) == [out]  # nothing half-written beside it


@pytest.mark.parametrize("argv, needles", [
    (["--augment", "none"], ["distort nothing"]),
    (["--rotate", "-3"], ["--rotate", "must be a finite number >= 0"]),
    (["--augment", "elastik"], ["--augment", "invalid choice"]),
    (["--count", "0"], ["--count", "must be from 1 to 50"]),
    (["--scale", "1.5"], ["scale must be from 0 to 1 (excluded)"]),
])
def test_samples_refuses_bad_flags_in_one_line(capsys, tmp_path, square_dir, argv, needles):
    from helpers import one_line_error, run_cli

    out = tmp_path / "samples.png"
    code, _, err = run_cli(capsys, "samples", "--data-dir", square_dir, "--no-verify", "--backend", "numpy", *argv,
                           "-o", str(out))
    one_line_error(code, err, *needles)
    assert not out.exists()


def test_samples_says_when_the_images_are_not_square(capsys, tmp_path, tiny_dir):
    from helpers import one_line_error, run_cli

    code, _, err = run_cli(capsys, "samples", "--data-dir", tiny_dir, "--no-verify", "--backend", "numpy",
                           "-o", str(tmp_path / "s.png"))
    one_line_error(code, err, "10 pixels are not square images")


def test_augment_flags_build_the_augment_they_name():
    import argparse

    from gpubp.augment import add_augment_arguments, augment_from_args

    p = argparse.ArgumentParser()
    add_augment_arguments(p)
    assert augment_from_args(p.parse_args([])) is None  # no flag: no augmentation
    assert augment_from_args(p.parse_args(["--augment", "simard-elastic", "--elastic-alpha", "20", "--shift", "1"])) \
        == Augment(elastic_alpha=20, elastic_sigma=4, shift=1)
    assert augment_from_args(p.parse_args(["--rotate", "5"])) == Augment(rotate=5)


def test_the_cupy_backend_captures_an_epochs_augmentation_as_one_graph(cupy_be):
    """CuPy's stream capture (the stand-in keeps CuPy's rules: raw pointers baked in, work on the capture
    stream): the graph replays with each epoch's key uploaded before it."""
    be, fake = cupy_be
    X = images(np.random.default_rng(7), 9, 28, 28, np.float32)
    aug = Augment(**ELASTIC)
    plan = aug.plan(be, np.float32, 28, 28, rows_per_pass=4)
    Xd, out = be.to_device(X), be.empty(X.shape, np.float32)
    be.prepare_capture("own")
    with be.counters() as c, be.capture() as graph:
        plan.run(Xd, out)
    assert (c.allocs, c.h2d, c.d2h, c.syncs) == (0, 0, 0, 0)
    for epoch in (0, 1):
        plan.set_epoch(5, epoch)
        graph.launch()
        assert_close(be.to_host(out), aug(X, seed=5, epoch=epoch, backend="numpy"), atol=1e-5,
                     what=f"replayed graph, epoch {epoch}")


def test_the_new_kernel_files_meet_the_kernel_standard_in_test_kernels():
    """augment.cu and max_norm.cu go through test_kernels.py's per-file checks (NVRTC as CuPy compiles, nvcc
    without spills, the sm_90 resources their headers state, no double in float code but where the header
    says why); here, that they are among its files and state a reference, a launch and tolerances."""
    assert {"augment.cu", "max_norm.cu"} <= set(K.kernel_files())
    for f in ("augment.cu", "max_norm.cu"):
        head = (K.kernel_dir() / f).read_text().split("#include")[0]
        assert "NumPy reference: gpubp.reference." in head and "Launch:" in head
        for dt in DTYPES:
            assert K.tolerance(f, dt) is not None


def test_an_augment_that_has_run_still_pickles_as_its_parameters():
    import copy
    import pickle

    aug = Augment(**ELASTIC)
    X = images(np.random.default_rng(8), 3, 28, 28, np.float32)
    first = aug(X, seed=1, epoch=0, backend="native")  # now it holds a plan with the native backend's arrays
    back = pickle.loads(pickle.dumps(aug))
    assert back == aug and "_plan_cache" not in back.__dict__
    assert_equal(back(X, seed=1, epoch=0, backend="native"), first)
    assert copy.deepcopy(aug) == aug
