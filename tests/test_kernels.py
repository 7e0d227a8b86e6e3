"""Every CUDA kernel: compiled by NVRTC as CuPy compiles it and by nvcc, then run on the emulated
backend (and on CuPy when a GPU answers) against a float64 reference and the NumPy reference.

Inputs are seeded random values with edge values (+-1000, 0, exact 0/1 activations, ties, NaN)
at sizes 1, 255, 257 and 10_007 (not multiples of the block of 256), in float32 and float64;
outputs are poisoned before a kernel writes them.
"""

import hashlib
import inspect
import os
import pickle
import re
import shutil
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor

import kernel_resources
import numpy as np
import pytest
from helpers import ACT64, COST64, DELTA64, PRIME64, assert_close, backends, softmax64

from gpubp import reference
from gpubp.activations import ACTIVATIONS, SOFTMAX
from gpubp.backends import get_backend
from gpubp.backends import kernel as K
from gpubp.cache import cache_root
from gpubp.costs import COSTS
from gpubp.errors import GpubpError
from gpubp.optimizers import OPTIMIZERS

SIZES = [1, 255, 257, 10_007]
DTYPES = [np.float32, np.float64]
# Every registered backend runs every kernel by name (numpy: its NumPy reference).
BACKENDS = backends()
# 2-D kernels: (rows, cols) with rows*cols = n, so the bias/row structure is exercised too
SHAPES = {1: (1, 1), 255: (17, 15), 257: (1, 257), 10_007: (10_007, 1)}
# The _models kernels of K stacked networks: (models, rows per model, cols) for the bias kernels and
# (models, parameters per model) for the optimizers; about n elements, none a multiple of a block.
MODEL_SHAPES = {1: (1, 1, 1), 255: (3, 5, 17), 257: (257, 1, 1), 10_007: (7, 11, 130)}
MODEL_PARAMS = {1: (1, 1), 255: (5, 51), 257: (257, 1), 10_007: (7, 1431)}


def need_nvrtc():
    """CuPy's NVRTC bindings; under CI their absence is a failure, elsewhere a skip with the reason."""
    try:
        from cupy.cuda import nvrtc
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CuPy's NVRTC bindings are required in CI (install the test extra): {e}")
        pytest.skip(f"CuPy is not installed (pip install 'gpubp[test]'): {e}")
    return nvrtc


# ---------------------------------------------------------------------------------------------
# Compilation: NVRTC exactly as the CuPy backend, and nvcc
# ---------------------------------------------------------------------------------------------

def cupy_options(arch_option):
    """The options CuPy's RawModule(code=..., options=NVRTC_OPTIONS) hands to NVRTC: compile_with_cache
    assembles its include paths and --std=c++17 around ours, _compile_with_cache_cuda adds -ftz=true,
    and _compile_using_nvrtc adds the architecture and --device-as-default-execution-space."""
    from cupy._core import core

    return [*core.assemble_cupy_compiler_options(K.NVRTC_OPTIONS), "-ftz=true", arch_option,
            "--device-as-default-execution-space"]


def cache_options(arch_option):
    """cupy_options as a cache key: the include paths inside the CuPy package named from the package,
    so that every checkout's environment with this CuPy (its version is in the key) hits the same
    entries; the kernel files include none of CuPy's headers, only what K.source inlines."""
    import cupy

    root = os.path.dirname(cupy.__file__)
    return [o.replace(root, "<cupy>") for o in cupy_options(arch_option)]


def nvrtc_compile(nvrtc, file, arch):
    """NVRTC's cubin for sm_<arch> of one kernel file and the PTX it went through, or the error and
    NVRTC's log."""
    prog = nvrtc.createProgram(K.source(file), file, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, cupy_options(f"-arch=sm_{arch}"))
        except nvrtc.NVRTCError as e:
            return f"NVRTC failed on {file} with -arch=sm_{arch}: {e}\n{nvrtc.getProgramLog(prog)}"
        ptx = nvrtc.getPTX(prog)
        return nvrtc.getCUBIN(prog), ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(prog)


NVCC_GENCODE = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in (75, 80, 90)]


def nvcc_command(path):
    """nvcc for sm_75/80/90 with ptxas's report (-Xptxas -v); --fatbin stops before the host compile,
    which tells nothing about the kernels."""
    return ["nvcc", *NVCC_GENCODE, "-Xptxas", "-v", "--fatbin", "-o", os.devnull, str(path)]


class CompileCache:
    """Compile results kept by a hash of everything that decides them: the source, the options and the
    compiler's version. A source, option or compiler that changes misses, so a hit is the result that
    compiling now would give. Failures are not kept (they compile again, with their message, next
    time). In $XDG_CACHE_HOME/gpubp/kernel-checks (else ~/.cache), beside the backends' builds."""

    def __init__(self, tool):
        self.dir = cache_root() / "kernel-checks"
        self.tool = tool

    def path(self, *parts):
        h = hashlib.sha256("\0".join([self.tool, *map(str, parts)]).encode()).hexdigest()[:32]
        return self.dir / f"{h}.pickle"

    def get(self, *parts):
        try:
            return pickle.loads(self.path(*parts).read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError):
            return None

    def put(self, value, *parts):
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(*parts)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(value))
        os.replace(tmp, path)  # readers in other processes see the whole file or none


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every kernel file through nvcc (sm_75/80/90, -Xptxas -v) and NVRTC (a cubin for sm_75/80/90, and
    the PTX of sm_90's), all at once: the nvcc processes start first and the NVRTC compiles run on two
    threads beside them (NVRTC lets go of the GIL), so the compiles share the machine's cores. Results
    come from CompileCache when the source, options and compiler are those compiled before.
    Returns {"nvcc": {file: (status, report)}, "nvrtc": {(file, arch): cubin or error text, (file, "ptx"):
    PTX}}."""
    nvrtc = need_nvrtc()
    import cupy

    reports, procs = {}, {}
    if shutil.which("nvcc"):
        nvcc_cache = CompileCache(subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout)
        tmp = tmp_path_factory.mktemp("nvcc")
        for f in K.kernel_files():
            reports[f] = nvcc_cache.get(nvcc_command(f), K.source(f))
            if reports[f] is None:
                (tmp / f).write_text(K.source(f))
                procs[f] = subprocess.Popen(nvcc_command(tmp / f), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            text=True)
    nvrtc_cache = CompileCache(f"NVRTC {nvrtc.getVersion()} CuPy {cupy.__version__}")
    results, jobs = {}, []
    for f in K.kernel_files():
        for a in (75, 80, 90):
            hit = nvrtc_cache.get(cache_options(f"-arch=sm_{a}"), K.source(f))
            if hit is None:
                jobs.append((f, a))
            else:
                results[f, a] = hit
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda j: nvrtc_compile(nvrtc, *j), jobs))
    for (f, a), out in zip(jobs, outs):
        results[f, a] = out
        if isinstance(out, tuple):
            nvrtc_cache.put(out, cache_options(f"-arch=sm_{a}"), K.source(f))
    for f, p in procs.items():  # a report is a few kB: the pipes never fill while another is read
        _, stderr = p.communicate()
        reports[f] = (p.returncode, stderr)
        if p.returncode == 0:
            nvcc_cache.put(reports[f], nvcc_command(f), K.source(f))
    cubins = {k: v[0] if isinstance(v, tuple) else v for k, v in results.items()}
    cubins.update({(f, "ptx"): v[1] if isinstance(v, tuple) else v for (f, a), v in results.items() if a == 90})
    return {"nvcc": reports, "nvrtc": cubins}


def ptx_entries(ptx):
    """{entry name: its PTX body}."""
    parts = re.split(r"\.visible \.entry (\w+)\(", ptx)
    return dict(zip(parts[1::2], parts[2::2]))


def double_on_purpose(file):
    """The kernels a file's header says compute in double even for float data ("Double on purpose: ...")."""
    header = (K.kernel_dir() / file).read_text().split("#include")[0]
    m = re.search(r"// Double on purpose: ([\w, ]+)", header)
    return {n.strip() for n in m.group(1).split(",")} if m else set()


@pytest.mark.early  # the first run compiles every kernel (half a minute): a parallel run overlaps it with the rest
@pytest.mark.parametrize("arch", [75, 80, 90])
@pytest.mark.parametrize("file", K.kernel_files())
def test_nvrtc_compiles_every_kernel_as_cupy_does(file, arch, compiled):
    cubin = compiled["nvrtc"][file, arch]  # what CuPy loads on such a GPU
    assert isinstance(cubin, bytes), cubin
    assert len(cubin) > 1000
    if arch != 90:  # the PTX checks below do not depend on the architecture: once per file
        return
    ptx = compiled["nvrtc"][file, "ptx"]
    assert isinstance(ptx, str) and ".visible .entry" in ptx, ptx
    entries = ptx_entries(ptx)
    names = set(K.parse_signatures(K.source(file)))
    assert names and set(entries) == names  # our reading of the macros finds exactly what NVRTC made
    for name, body in entries.items():
        assert name.endswith(("_f32", "_f64"))
        if name.endswith("_f32") and name[:-4] not in double_on_purpose(file):  # float kernels: no double
            assert ".f64" not in body, f"{name} uses double precision at compute_{arch}"


def test_every_kernel_exists_for_both_precisions():
    names = set(K.signatures())
    for stem in {n[:-4] for n in names}:
        f32, f64 = K.signatures()[stem + "_f32"][1], K.signatures()[stem + "_f64"][1]
        assert [p.name for p in f32] == [p.name for p in f64]
        for p in f32 + f64:  # sizes travel as 64-bit integers
            if p.name in ("n", "rows", "cols", "classes", "n_weights"):
                assert p.ctype == "long long" and not p.pointer
        # float kernels take float data; only a float64 total of a sum (and integer labels) differs
        assert {p.ctype for p in f32 if p.name not in ("labels", "total", "tf32", "key")} <= {"float", "long long",
                                                                                               "unsigned int"}
        # dropout's key: {seed, epoch} on the device (Network.dropout_key)
        assert all(p.pointer and p.ctype == "unsigned long long" for p in f32 if p.name == "key" and "drop" in stem)
        assert all(p.ctype == "double" for p in f32 if p.name == "total")


def test_entry_points_come_from_one_template():
    """No hand-written f32/f64 wrappers: every entry point is made by GPUBP_EXPORT."""
    for f in K.kernel_files():
        text = (K.kernel_dir() / f).read_text()
        assert 'extern "C"' not in text, f"{f} writes an entry point by hand"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("file", K.kernel_files())
def test_nvcc_compiles_without_spills(file, compiled):
    code, stderr = compiled["nvcc"][file]
    p = subprocess.CompletedProcess([], code, "", stderr)
    assert p.returncode == 0, p.stderr
    for arch in (75, 80, 90):
        for name in K.parse_signatures(K.source(file)):
            assert f"Compiling entry function '{name}' for 'sm_{arch}'" in p.stderr
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", p.stderr)
    assert spills and all(s == ("0", "0") for s in spills), p.stderr
    # and the header states the registers, shared memory and occupancy nvcc reports for sm_90 now
    # (uv run --extra test python tests/kernel_resources.py --write rewrites them after a kernel changes)
    assert kernel_resources.stated(file) == kernel_resources.block(file, kernel_resources.parse(p.stderr))


def test_kernel_file_headers_say_what_they_are():
    for f in K.kernel_files():
        head = (K.kernel_dir() / f).read_text().split("#include")[0]
        for needle in ("NumPy reference: gpubp.reference.", "Launch:", "Tolerance"):
            assert needle in head, f"{f} header lacks {needle!r}"
        for dt in DTYPES:
            for name in K.parse_signatures(K.source(f)):
                K.tolerance(f, dt, name[:-4])  # parses, for every kernel of the file


# ---------------------------------------------------------------------------------------------
# Kernels against float64 references
# ---------------------------------------------------------------------------------------------

def edges(a, rng, values=(1000.0, -1000.0, 0.0)):
    """Write each edge value at a few random places of ``a`` (in place); returns a."""
    flat = a.reshape(-1)
    for v in values:
        flat[rng.integers(0, flat.size, max(1, flat.size // 50))] = v
    return a


def cast(a, dtype):
    return np.asarray(a, dtype=dtype).astype(np.float64)


def poisoned(be, shape, dtype):
    return be.to_device(np.full(shape, np.nan), dtype)


def run(be, stem, dtype, n, *args):
    be.kernel(stem, dtype)(n, *args)


def case_bias_act(act):
    def case(be, rng, n, dtype):
        rows, cols = SHAPES[n]
        Z, b = edges(rng.standard_normal((rows, cols)) * 6, rng), rng.standard_normal(cols) * 6
        expected = ACT64[act](cast(Z, dtype) + cast(b, dtype))
        Zd, bd = be.to_device(Z, dtype), be.to_device(b, dtype)
        run(be, f"bias_{act}", dtype, Z.size, Zd, bd, rows, cols)  # in place: a skipped element shows
        return Zd, expected, None
    return case


def case_bias_softmax(be, rng, n, dtype):
    rows, cols = (n, 10) if n > 1 else (1, 1)
    Z, b = edges(rng.standard_normal((rows, cols)) * 6, rng), rng.standard_normal(cols) * 6
    z = cast(Z, dtype) + cast(b, dtype)
    expected = softmax64(z)
    Zd, bd = be.to_device(Z, dtype), be.to_device(b, dtype)
    run(be, "bias_softmax", dtype, rows, Zd, bd, rows, cols)
    out = be.to_host(Zd)
    assert np.isfinite(out).all()  # rows holding +-1000 stay finite
    return Zd, expected, np.broadcast_to(np.abs(z).max(axis=1, keepdims=True), z.shape)


def case_bias_models(act):
    """K models' row blocks, each with its own bias; the biases sit b_stride apart with NaN between
    them (as in the (K, P) parameters, where weights lie between), so a misread bias shows."""
    def case(be, rng, n, dtype):
        models, rpm, cols = MODEL_SHAPES[n]
        if act == "softmax" and n > 1:
            cols = 10
        rows, stride = models * rpm, cols + 3
        Z = edges(rng.standard_normal((rows, cols)) * 6, rng)
        bias = rng.standard_normal((models, cols)) * 6
        buf = np.full((models, stride), np.nan)
        buf[:, :cols] = bias
        z = cast(Z, dtype) + np.repeat(cast(bias, dtype), rpm, axis=0)  # row r gets model r // rpm's bias
        Zd = be.to_device(Z, dtype)
        work = rows if act == "softmax" else Z.size
        run(be, f"bias_{act}_models", dtype, work, Zd, be.to_device(buf.reshape(-1), dtype), rows, cols, rpm, stride)
        if act == "softmax":
            return Zd, softmax64(z), np.broadcast_to(np.abs(z).max(axis=1, keepdims=True), z.shape)
        return Zd, ACT64[act](z), None
    return case


def activations(rng, shape, act="sigmoid"):
    if act == "sigmoid":
        return edges(rng.random(shape), rng, values=(0.0, 1.0))
    if act == "tanh":
        return edges(rng.uniform(-1, 1, shape), rng, values=(-1.0, 0.0, 1.0))
    return edges(np.maximum(rng.standard_normal(shape) * 3, 0), rng, values=(0.0, 1000.0))


def case_act_delta(act):
    def case(be, rng, n, dtype):
        G = edges(rng.standard_normal((n, 1)) * 5, rng)
        A = activations(rng, (n, 1), act)
        expected = cast(G, dtype) * PRIME64[act](cast(A, dtype))
        Gd = be.to_device(G, dtype)
        run(be, f"{act}_delta", dtype, n, Gd, be.to_device(A, dtype), n)
        return Gd, expected, None
    return case


def case_output_delta(stem):
    def case(be, rng, n, dtype):
        A = activations(rng, (n, 1))
        A.reshape(-1)[rng.integers(0, n, max(1, n // 50))] = -1000.0  # the formula holds for any a
        Y = (rng.random((n, 1)) < 0.3).astype(float)
        scale = 3.0 / 7.0
        a, y = cast(A, dtype), cast(Y, dtype)
        s = float(np.asarray(scale, dtype))
        expected = s * DELTA64["quadratic" if stem == "quadratic_delta" else "cross_entropy"](a, y)  # a - y for both
        D = poisoned(be, (n, 1), dtype)
        run(be, stem, dtype, n, D, be.to_device(A, dtype), be.to_device(Y, dtype), n, scale)
        return D, expected, None
    return case


def optimizer_layout(rng, n, models):
    """(models, P, n_weights, per-model hyperparameter factors) for an optimizer case: one network of n
    parameters, or K models (MODEL_PARAMS) each with its own hyperparameters (factors around 1, one
    model at exactly 1, so a decay of 1 is covered too)."""
    nm, P = MODEL_PARAMS[n] if models else (1, n)
    spread = rng.uniform(0.5, 2.0, nm) if models else np.ones(1)
    spread[0] = 1.0
    return nm, P, P - P // 3, spread


def by_parameter(values, P):
    """Per-model values (K,) repeated over each model's P parameters: (K*P,)."""
    return np.repeat(values, P)


def hyper(be, values, dtype, models):
    """A hyperparameter as its kernel takes it: a device array of per-model values, or one number."""
    return be.to_device(values, dtype) if models else float(values[0])


def case_sgd_update(step, models=False):
    def case(be, rng, n, dtype):
        nm, P, nw, spread = optimizer_layout(rng, n, models)
        p, g = edges(rng.standard_normal(nm * P), rng), edges(rng.standard_normal(nm * P), rng)
        decay, steps = 1 - (0.5 * 5.0 / 50_000) * spread, step * spread
        if models:
            decay[-1] = 1.0  # no L2 for the last model
        pd_, gd = cast(p, dtype), cast(g, dtype)
        dec, stp = cast(decay, dtype), by_parameter(cast(steps, dtype), P)
        keep = np.where(np.tile(np.arange(P), nm) < nw, by_parameter(dec, P), 1.0)
        expected = keep * pd_ - stp * gd
        Pd, Gd = be.to_device(p, dtype), be.to_device(g, dtype)
        dh, sh = hyper(be, decay, dtype, models), hyper(be, steps, dtype, models)
        if models:
            run(be, "sgd_update_models", dtype, nm * P, Pd, Gd, nm * P, P, nw, dh, sh)
        else:
            run(be, "sgd_update", dtype, n, Pd, Gd, n, nw, dh, sh)
        return Pd, expected, np.abs(keep * pd_) + np.abs(stp * gd)
    return case


def case_momentum_update(models=False):
    def case(be, rng, n, dtype):
        nm, P, nw, spread = optimizer_layout(rng, n, models)
        p, g, v = (edges(rng.standard_normal(nm * P), rng) for _ in range(3))
        eta, mu, l2 = 0.37 * spread, 0.9, (5.0 / 50_000) * spread
        p64, g64, v64 = cast(p, dtype), cast(g, dtype), cast(v, dtype)
        mu_ = float(np.asarray(mu, dtype))
        eta_, l2_ = by_parameter(cast(eta, dtype), P), by_parameter(cast(l2, dtype), P)
        decay = np.where(np.tile(np.arange(P), nm) < nw, l2_, 0.0) * p64
        grad = g64 + decay
        vel = mu_ * v64 - eta_ * grad
        # the rounding of g + l2*p is relative to its terms, which may cancel: the scale holds them apart
        terms = np.abs(mu_ * v64) + np.abs(eta_) * (np.abs(g64) + np.abs(decay))
        Pd, V = be.to_device(p, dtype), be.to_device(v, dtype)
        eh, lh = hyper(be, eta, dtype, models), hyper(be, l2, dtype, models)
        if models:
            run(be, "momentum_update_models", dtype, nm * P, Pd, be.to_device(g, dtype), V, nm * P, P, nw, eh, mu, lh)
        else:
            run(be, "momentum_update", dtype, n, Pd, be.to_device(g, dtype), V, n, nw, eh, mu, lh)
        assert_close(be.to_host(V), vel, atol=1e-30, rtol=1e-5 if dtype == np.float32 else 1e-13,
                     scale=terms, what="momentum velocity")
        return Pd, p64 + vel, np.abs(p64) + terms
    return case


def case_adam_update(models=False):
    def case(be, rng, n, dtype):
        """Two launches: the step count on the device goes 6 -> 7 -> 8 and each uses its own t; the
        block counter is back at 0 after each (the last block resets it)."""
        nm, P, nw, spread = optimizer_layout(rng, n, models)
        p, g, m = (edges(rng.standard_normal(nm * P), rng) for _ in range(3))
        v = np.abs(edges(rng.standard_normal(nm * P), rng))
        eta, b1, b2, eps = 0.01 * spread, 0.9, 0.999, 1e-8
        decay = 1 - eta * 5.0 / 50_000
        Pd, G, Mm, V = (be.to_device(a, dtype) for a in (p, g, m, v))
        steps, done = be.to_device(np.array([6]), np.int64), be.to_device(np.zeros(1), np.uint32)
        p64, g64, m64, v64 = (cast(a, dtype) for a in (p, g, m, v))
        b1_, b2_, eps_ = (float(np.asarray(x, dtype)) for x in (b1, b2, eps))
        eta_ = by_parameter(cast(eta, dtype), P)
        keep = np.where(np.tile(np.arange(P), nm) < nw, by_parameter(cast(decay, dtype), P), 1.0)
        eh, dh = hyper(be, eta, dtype, models), hyper(be, decay, dtype, models)
        for t in (7, 8):
            if models:
                run(be, "adam_update_models", dtype, nm * P, Pd, G, Mm, V, steps, done, nm * P, P, nw, eh, b1, b2, eps,
                    dh)
            else:
                run(be, "adam_update", dtype, n, Pd, G, Mm, V, steps, done, n, nw, eh, b1, b2, eps, dh)
            m64 = b1_ * m64 + (1 - b1_) * g64
            v64 = b2_ * v64 + (1 - b2_) * g64 * g64
            # 1 - b^t as (1 - b)(1 + b + ... + b^(t-1)): 1 - b**t cancels, even in float64
            c1, c2 = ((1 - b) * sum(b ** k for k in range(t)) for b in (b1_, b2_))
            stepped = eta_ * (m64 / c1) / (np.sqrt(v64 / c2) + eps_)
            p64 = keep * p64 - stepped
            assert int(be.to_host(steps)[0]) == t and int(be.to_host(done)[0]) == 0
        atol, rtol = K.tolerance("adam.cu", dtype)
        assert_close(be.to_host(Mm), m64, atol=1e-30, rtol=4 * rtol, scale=np.abs(m64) + np.abs(g64), what="adam m")
        return Pd, p64, np.abs(keep * p64) + np.abs(stepped)
    return case


def case_one_hot(be, rng, n, dtype):
    labels = rng.integers(0, 10, n)
    expected = np.zeros((n, 10))
    expected[np.arange(n), labels] = 1
    Y = poisoned(be, (n, 10), dtype)
    run(be, "one_hot", dtype, Y.size, Y, be.to_device(labels, np.int64), n, 10)
    return Y, expected, None


def case_argmax_count(be, rng, n, dtype):
    """Added to a total that already holds 2.5 (so an overwrite instead of an add shows)."""
    cols = 10
    A = edges(rng.standard_normal((n, cols)), rng)
    A[::7, 3] = A[::7, 8] = A[::7].max(axis=1) + 1  # ties: the first maximum wins
    A[::11, 5] = np.nan  # a NaN counts as the maximum, as numpy.argmax
    Ad = np.asarray(A, dtype)
    labels = np.where(rng.random(n) < 0.5, np.argmax(Ad, axis=1), rng.integers(0, cols, n))
    expected = 2.5 + np.count_nonzero(np.argmax(Ad, axis=1) == labels)
    total = be.to_device(np.array([2.5]), np.float64)
    run(be, "argmax_count", dtype, n, total, be.to_device(A, dtype), be.to_device(labels, np.int64), n, cols)
    return total, np.array([expected]), None


def case_cost(name):
    """The summed cost of a batch (with edge activations 0 and 1, where the clip matters), added to 2.5."""
    def case(be, rng, n, dtype):
        rows, cols = (n, 10) if n > 1 else (1, 1)
        A = activations(rng, (rows, cols))
        Y = np.eye(cols)[rng.integers(0, cols, rows)]
        expected = 2.5 + np.sum(COST64[name](cast(A, dtype), Y))
        total = be.to_device(np.array([2.5]), np.float64)
        run(be, f"{name}_cost", dtype, rows, total, be.to_device(A, dtype), be.to_device(Y, dtype), rows, cols)
        return total, np.array([expected]), None
    return case


def case_gather_rows(be, rng, n, dtype):
    rows, cols_x, cols_y = (n, 3, 2) if n > 1 else (1, 1, 1)
    X, Y = edges(rng.standard_normal((rows, cols_x)), rng), rng.standard_normal((rows, cols_y))
    perm = rng.permutation(rows)
    Xs, Ys = be.to_device(np.full((rows, cols_x), np.nan), dtype), be.to_device(np.full((rows, cols_y), np.nan), dtype)
    run(be, "gather_rows", dtype, rows * (cols_x + cols_y), Xs, Ys, be.to_device(X, dtype), be.to_device(Y, dtype),
        be.to_device(perm, np.int64), rows, cols_x, cols_y)
    assert_close(be.to_host(Ys), cast(Y, dtype)[perm], what="gather_rows Y")
    return Xs, cast(X, dtype)[perm], None


def case_fill(be, rng, n, dtype):
    x = be.to_device(np.full(n, np.nan), dtype)
    run(be, "fill", dtype, n, x, n, -3.25)
    return x, np.full(n, -3.25), None


def case_sum(kernel, square):
    def case(be, rng, n, dtype):
        x = cast(edges(rng.standard_normal(n), rng), dtype)
        total = be.to_device(np.array([2.5]), np.float64)
        run(be, kernel, dtype, n, total, be.to_device(x, dtype), n)
        terms = x * x if square else x
        return total, np.array([2.5 + np.sum(terms)]), np.array([2.5 + np.sum(np.abs(terms))])
    return case


# kernel case -> (file, kernel stem, case)
CASES = {
    **{f"bias_{a}": (f"{a}.cu", f"bias_{a}", case_bias_act(a)) for a in ("sigmoid", "tanh", "relu")},
    **{f"{a}_delta": (f"{a}.cu", f"{a}_delta", case_act_delta(a)) for a in ("sigmoid", "tanh", "relu")},
    "bias_softmax": ("softmax.cu", "bias_softmax", case_bias_softmax),
    "quadratic_delta": ("quadratic.cu", "quadratic_delta", case_output_delta("quadratic_delta")),
    "difference_delta": ("difference_delta.cu", "difference_delta", case_output_delta("difference_delta")),
    "sgd_update": ("sgd.cu", "sgd_update", case_sgd_update(0.37)),
    "sgd_update_unit_step": ("sgd.cu", "sgd_update", case_sgd_update(1.0)),
    "momentum_update": ("momentum.cu", "momentum_update", case_momentum_update()),
    "adam_update": ("adam.cu", "adam_update", case_adam_update()),
    # the K-model variants (gpubp.sweeps.stack)
    **{f"bias_{a}_models": (f"{a}.cu", f"bias_{a}_models", case_bias_models(a)) for a in ("sigmoid", "tanh", "relu")},
    "bias_softmax_models": ("softmax.cu", "bias_softmax_models", case_bias_models("softmax")),
    "sgd_update_models": ("sgd.cu", "sgd_update_models", case_sgd_update(0.37, models=True)),
    "momentum_update_models": ("momentum.cu", "momentum_update_models", case_momentum_update(models=True)),
    "adam_update_models": ("adam.cu", "adam_update_models", case_adam_update(models=True)),
    "one_hot": ("one_hot.cu", "one_hot", case_one_hot),
    "argmax_count": ("argmax_count.cu", "argmax_count", case_argmax_count),
    **{f"{c}_cost": (f"{c}.cu", f"{c}_cost", case_cost(c)) for c in ("quadratic", "cross_entropy", "log_likelihood")},
    "gather_rows": ("gather.cu", "gather_rows", case_gather_rows),
    "fill": ("accumulate.cu", "fill", case_fill),
    "sum_into": ("accumulate.cu", "sum_into", case_sum("sum_into", False)),
    "sum_squares_into": ("accumulate.cu", "sum_squares_into", case_sum("sum_squares_into", True)),
}
TOTALS = {"argmax_count", "quadratic_cost", "cross_entropy_cost", "log_likelihood_cost", "sum_into",
          "sum_squares_into"}  # kernels that add into a float64 total


# The own route's layer kernels, tested in tests/test_layer_kernels.py.
LAYER_STEMS = ({f"layer_{k}_{a}_{t}" for k in ("forward", "delta") for a in ACTIVATIONS for t in "sl"}
               | {f"layer_output_{c}" for c in COSTS} | {"layer_update_s", "layer_update_l"})


# The augmentation and max-norm kernels, tested in tests/test_augment.py.
AUGMENT_STEMS = {"augment_affine", "augment_field", "augment_pad", "augment_resample", "max_norm"}


# The dropout kernels (the plain kernels' epilogues with masks), tested in tests/test_dropout.py.
DROPOUT_STEMS = ({f"bias_{a}_drop" for a in ACTIVATIONS} | {f"{a}_delta_drop" for a in ACTIVATIONS} | {"dropout"}
                 | {f"layer_{k}_{a}_drop_{t}" for k in ("forward", "delta") for a in ACTIVATIONS for t in "sl"})


def test_every_kernel_has_a_case_here():
    """A kernel added without a test here (or, for the layer kernels, in test_layer_kernels.py; augmentation
    and max-norm in test_augment.py; dropout in test_dropout.py) fails this."""
    stems = {n[:-4] for n in K.signatures()}
    assert stems == {stem for _, stem, _ in CASES.values()} | LAYER_STEMS | AUGMENT_STEMS | DROPOUT_STEMS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kernel", list(CASES))
def test_kernel_matches_float64_reference(kernel, n, dtype, backend):
    """Each backend's kernel (the NumPy reference on numpy) within the tolerance its file states."""
    file, stem, case = CASES[kernel]
    be = get_backend(backend)
    out, expected, scale = case(be, np.random.default_rng(zlib.crc32(f"{kernel}/{n}".encode())), n, dtype)
    out = be.to_host(out)
    assert out.dtype == (np.float64 if kernel in TOTALS else dtype)
    atol, rtol = K.tolerance(file, dtype, stem)
    assert_close(out, expected, atol=atol, rtol=rtol, scale=scale, what=f"{kernel} n={n} on {backend}")


@pytest.mark.parametrize("backend", backends(lambda b: b.compiles_kernels))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kernel", list(CASES))
def test_kernel_matches_numpy_reference(kernel, dtype, backend):
    """The kernel and the NumPy reference agree on the same inputs, within the stated tolerance."""
    file, stem, case = CASES[kernel]
    atol, rtol = K.tolerance(file, dtype, stem)
    got, _, scale = case(get_backend(backend), np.random.default_rng(5), 10_007, dtype)
    ref, _, _ = case(get_backend("numpy"), np.random.default_rng(5), 10_007, dtype)
    ref64 = np.asarray(ref, dtype=np.float64)
    assert_close(get_backend(backend).to_host(got), ref64, atol=atol, rtol=2 * rtol, scale=scale,
                 what=f"{kernel} {backend} vs numpy")


def test_every_reference_takes_its_kernels_exact_arguments():
    """gpubp.reference.<stem> has the kernel's parameters, by name and in order (plus keyword scratch)."""
    for name, (_, params) in K.signatures().items():
        if name.endswith("_f64"):
            continue
        ref = getattr(reference, name[:-4])
        got = [p.name for p in inspect.signature(ref).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert got == [p.name for p in params], f"reference.{name[:-4]} vs kernel {name}"


def test_every_registered_concept_has_its_kernels():
    """Each activation, cost and optimizer names kernels that exist for float and double."""
    stems = [a.forward_kernel for a in (*ACTIVATIONS.values(), SOFTMAX)]
    stems += [a.delta_kernel for a in ACTIVATIONS.values()]
    stems += [f"layer_{k}_{a}_{t}" for k in ("forward", "delta") for a in ACTIVATIONS for t in K.LAYER_TILES]
    stems += [k for c in COSTS.values() for k in (c.delta_kernel, c.value_kernel, c.output_kernel)]
    stems += [o.kernel_name for o in OPTIMIZERS.values()]
    for stem in stems:
        for sfx in ("_f32", "_f64"):
            assert stem + sfx in K.signatures(), f"no kernel {stem + sfx}"


# ---------------------------------------------------------------------------------------------
# The launcher refuses what RawKernel would silently misuse
# ---------------------------------------------------------------------------------------------

def test_launcher_rejects_bad_arguments():
    be = get_backend("emulated")
    Z = np.ones((4, 6), np.float32)
    b = np.ones(6, np.float32)
    with pytest.raises(GpubpError, match="C-contiguous"):
        be.launch("bias_sigmoid_f32", 24, np.ones((6, 4), np.float32).T, b, 4, 6)
    with pytest.raises(GpubpError, match="must be float32, got float64"):
        be.launch("bias_sigmoid_f32", 24, Z.astype(np.float64), b, 4, 6)
    with pytest.raises(GpubpError, match="takes 4 arguments, got 3"):
        be.launch("bias_sigmoid_f32", 24, Z, b, 4)
    with pytest.raises(GpubpError, match="must be an integer"):
        be.launch("bias_sigmoid_f32", 24, Z, b, 4.0, 6)
    with pytest.raises(GpubpError, match="is a scalar, got an array"):
        be.launch("bias_sigmoid_f32", 24, Z, b, np.array([4, 5]), 6)
    with pytest.raises(GpubpError, match="must be a emulated array"):
        be.launch("bias_sigmoid_f32", 24, [1.0], b, 4, 6)
    with pytest.raises(GpubpError, match="no kernel named 'bias_swish_f32'"):
        be.launch("bias_swish_f32", 24, Z, b, 4, 6)
    with pytest.raises(GpubpError, match="float32 or float64"):
        be.kernel("bias_sigmoid", np.float16)
    with be.counters() as c:  # nothing was launched by the refused calls above, nor by these
        with pytest.raises(GpubpError):
            be.launch("sigmoid_delta_f32", 6, np.ones(6, np.float32), np.ones(6, np.float64), 6)
    assert c.launches == 0


def test_grid_is_ceil_div_capped_to_a_multiple_of_the_sms():
    assert K.grid_size(1, 80) == 1
    assert K.grid_size(256, 80) == 1 and K.grid_size(257, 80) == 2
    assert K.grid_size(10**9, 80) == 80 * K.BLOCKS_PER_SM
    assert K.grid_size(10**9, 80) % 80 == 0


def test_signature_parser_reads_what_the_sources_declare():
    sig = K.parse_signatures('extern "C" __global__ void k_f32(float* __restrict__ a, const long long* b, '
                             'long long n, double s) {}')
    assert sig == {"k_f32": (K.Param("a", "float", True), K.Param("b", "long long", True),
                             K.Param("n", "long long", False), K.Param("s", "double", False))}
    with pytest.raises(GpubpError, match="cannot read parameter"):
        K.parse_signatures('extern "C" __global__ void k(float2 a) {}')


def test_macro_expansion_reads_exported_templates():
    """GPUBP_EXPORT and macros built on it (## pasting, nesting) expand to f32/f64 entry points whose
    T parameters read as float and double; a macro named in a comment is not expanded."""
    code = K.source("one_hot.cu") + """
// GPUBP_TWICE(never, called) in a comment
#define GPUBP_TWICE(NAME, ACT) GPUBP_EXPORT(NAME##_x, (f<ACT, T>), (T* __restrict__ a, long long n), (a, n))
GPUBP_TWICE(demo, Act)
"""
    sig = K.parse_signatures(code)
    assert {k for k in sig if k.startswith("demo")} == {"demo_x_f32", "demo_x_f64"}
    assert sig["demo_x_f32"] == (K.Param("a", "float", True), K.Param("n", "long long", False))
    assert sig["demo_x_f64"][0] == K.Param("a", "double", True)
    assert not any(k.startswith("never") for k in sig)
