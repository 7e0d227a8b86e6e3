"""The native backend: our kernel sources compiled for this CPU. Its layer kernels, training runs,
graphs and counters are also in test_layer_kernels.py and test_graphs.py beside the emulator's;
here is what is its own: aligned buffers, its defaults (own route, graphs), the narrower vector
paths of other -march targets, and the command line."""

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_differs, assert_equal, run_cli

from gpubp import Network
from gpubp.backends import get_backend, native
from gpubp.backends import kernel as K
from gpubp.errors import BackendUnavailable, GpubpError
from gpubp.training import graph_mode


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("shape", [(1,), (7,), (33, 5), (3, 257, 2)])
def test_buffers_start_on_a_cache_line(shape, dtype):
    be = get_backend("native")
    a = be.empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.ctypes.data % native.ALIGN == 0
    a[...] = 3  # writable over its whole extent
    assert_equal(a, 3)


def test_the_own_route_and_graphs_are_its_defaults():
    net = Network([6, 5, 3], backend="native")
    assert net.gemm == "own"
    assert graph_mode(net) == (True, "the native backend records an epoch's launches and replays them in one call")
    blas = Network([6, 5, 3], backend="native", gemm="blas")  # NumPy's products, eager
    ok, why = graph_mode(blas)
    assert not ok and why.startswith("eager: the native backend replays its own kernels only")
    with pytest.raises(GpubpError, match="cannot be captured: the native backend replays its own kernels only"):
        graph_mode(blas, True)
    # softmax on the own route is one tile wide (32 outputs): wider nets take the blas route by default
    assert Network([6, 40], cost="log_likelihood", backend="native").gemm == "blas"


def test_the_blas_route_on_native_trains_as_numpy():
    rng = np.random.default_rng(3)
    X, y = rng.random((40, 12)), rng.integers(0, 4, 40)
    out = {}
    for b, gemm in (("numpy", "blas"), ("native", "blas"), ("native", "own")):
        net = Network([12, 8, 4], backend=b, gemm=gemm, dtype="float64", seed=2)
        net.sgd((X, y), epochs=2, mini_batch_size=6, eta=0.5, seed=5, monitor_training_cost=False)
        out[b, gemm] = net.get_params()
    ref = out["numpy", "blas"]
    for key in (("native", "blas"), ("native", "own")):  # NumPy's products or ours, our elementwise kernels
        assert np.linalg.norm(out[key] - ref) <= 1e-10 * np.linalg.norm(ref), key
    assert_differs(ref, Network([12, 8, 4], dtype="float64", seed=2).get_params(), atol=1e-8, rtol=1e-5)  # it trained


def _x86_arch(arch):
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"-march={arch} is an x86-64 target; this machine is {platform.machine()}")


@pytest.mark.parametrize("arch", ["x86-64", "x86-64-v3"])  # SSE2 (4 floats a vector), AVX2 (8)
def test_narrower_vector_paths_train_as_numpy(arch, monkeypatch):
    """The layer kernels' vector spans and tails are sized by the target's vector width: build for a
    narrower one than this CPU's (GPUBP_NATIVE_ARCH) and train at sizes that leave tails everywhere.
    One hidden activation (the spans and tails are native_layer.h's, the same for every activation;
    each activation file is another 4 s of compiling per target) under each cost's output layer."""
    _x86_arch(arch)
    monkeypatch.setenv("GPUBP_NATIVE_ARCH", arch)
    be = native.NativeBackend()
    assert f"-march={arch}" in be.device
    rng = np.random.default_rng(8)
    X, y = rng.random((61, 70)), rng.integers(0, 10, 61)
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-4)):
        for activation, cost in (("relu", "cross_entropy"), ("relu", "log_likelihood"), ("relu", "quadratic")):
            out = {}
            for b in ("numpy", be):
                net = Network([70, 37, 19, 10], backend=b, dtype=dtype, seed=3, activation=activation, cost=cost,
                              gemm="blas" if b == "numpy" else "own")
                net.sgd((X, y), epochs=2, mini_batch_size=13, eta=0.3, lmbda=1.0, seed=4, optimizer="momentum",
                        momentum=0.5, monitor_training_cost=False)
                out["numpy" if b == "numpy" else "native"] = net.get_params().astype(np.float64)
            err = np.linalg.norm(out["native"] - out["numpy"]) / np.linalg.norm(out["numpy"])
            assert err <= tol, (arch, dtype, activation, cost, err)


def test_an_unknown_arch_is_one_clear_error(monkeypatch):
    _x86_arch("bogus")
    monkeypatch.setenv("GPUBP_NATIVE_ARCH", "no-such-cpu")
    with pytest.raises(BackendUnavailable, match="GPUBP_NATIVE_ARCH: .* refuses -march=no-such-cpu .*unset it"):
        native.NativeBackend()


def test_a_failed_compile_names_the_compiler_and_the_first_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    be = get_backend("native")
    with pytest.raises(BackendUnavailable, match="could not compile broken for the native backend: .*error"):
        native.build_unit("int f( { return 0; }\n", be.compiler, "broken")
    assert not list((tmp_path / "gpubp" / "native").glob("*.so"))  # nothing half-built is left to be loaded


def test_the_cache_key_changes_with_the_cpu(monkeypatch, tmp_path):
    """A library built with -march=native for one CPU is never loaded on another sharing the cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    be = get_backend("native")
    native.build_unit("extern \"C\" int f() { return 1; }\n", be.compiler, "probe")
    monkeypatch.setattr(native, "cpu_identity", lambda: "model name: another CPU")
    native.build_unit("extern \"C\" int f() { return 1; }\n", be.compiler, "probe")
    assert len(list((tmp_path / "gpubp" / "native").glob("probe-*.so"))) == 2


def test_training_from_the_command_line(capsys, tmp_path, mnist_dir):
    """network.py's setup on the native backend: one epoch as one graph, and the book's accuracy."""
    metrics = tmp_path / "run.json"
    code, out, err = run_cli(capsys, "train", "--backend", "native", "--epochs", "1", "--sizes", "784,30,10",
                             "--batch-size", "10", "--eta", "3.0", "--seed", "1", "--data-dir", mnist_dir,
                             "--metrics-out", str(metrics), "--no-train-cost")
    assert code == 0, err
    assert "(graph)" in out
    m = json.loads(metrics.read_text())
    assert m["config"]["gemm"] == "own" and m["config"]["graph"] is True and m["test_accuracy"] > 0.85


def test_info_says_which_route_and_mode_a_run_takes(capsys, monkeypatch):
    monkeypatch.setenv("GPUBP_BACKEND", "native")
    code, out, err = run_cli(capsys, "info")
    assert code == 0, err
    assert "backend: native on CPU" in out
    assert "--gemm own (the default): each epoch is one graph (the native backend records" in out
    assert "--gemm blas: eager: the native backend replays its own kernels only" in out


def test_native_is_never_chosen_by_auto():
    from gpubp.backends import AUTO_ORDER

    assert "native" not in AUTO_ORDER  # it compiles on first use and needs a C++ compiler: asked for by name only


THREADED = """
import sys
import numpy as np
from gpubp import Network
rng = np.random.default_rng(2)
X, y = rng.random((300, 801)), rng.integers(0, 10, 300)
net = Network([801, 67, 10], backend=sys.argv[1], gemm=sys.argv[2], dtype="float64", seed=5, cost="cross_entropy")
net.sgd((X, y), epochs=2, mini_batch_size=130, eta=0.5, lmbda=1.0, seed=6, monitor_training_cost=False)
np.save(sys.argv[3], net.get_params())
"""


def test_large_products_split_between_threads_give_the_same_bits(tmp_path):
    """Products of >= 2**21 multiply-adds run on every core (OpenMP); each element is still one
    thread's sum in one order, so one thread and two give the same bits, and NumPy's result."""
    script = tmp_path / "run.py"
    script.write_text(THREADED)
    out = {}
    for label, backend, gemm, threads in (("1", "native", "own", "1"), ("2", "native", "own", "2"),
                                          ("numpy", "numpy", "blas", "2")):
        path = tmp_path / f"{label}.npy"
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        res = subprocess.run([sys.executable, str(script), backend, gemm, str(path)], env=env, capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stderr
        out[label] = np.load(path)
    assert_equal(out["1"], out["2"])
    assert np.linalg.norm(out["2"] - out["numpy"]) <= 1e-10 * np.linalg.norm(out["numpy"])
    assert 130 * 801 * 67 >= native.PARALLEL_MACS  # the first layer's products do take the threaded path


def test_an_arch_this_cpu_cannot_run_is_refused_not_a_crash(monkeypatch):
    """A library built for instructions the CPU lacks would die of SIGILL: the probe runs a program
    built for the target first (Sapphire Rapids has AVX-512 FP16, which few other CPUs have)."""
    _x86_arch("sapphirerapids")
    if "avx512_fp16" in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU runs Sapphire Rapids' instructions: nothing to refuse")
    monkeypatch.setenv("GPUBP_NATIVE_ARCH", "sapphirerapids")
    with pytest.raises(BackendUnavailable, match="-march=sapphirerapids uses instructions this CPU does not have"):
        native.NativeBackend()


# One identifier #defined as another: it would swap the name silently everywhere after it.
_RENAME = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+([A-Za-z_]\w*)[ \t]*$", re.MULTILINE)
# An entry point and the first name its body calls: GPUBP_EXPORT's `{ CALLEE ARGS; }`.
_ENTRY_CALL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\([^)]*\)\s*\{\s*\(?\s*(\w+)')
# The templates native_layer.h has its own host code for (named native_<name> there).
HOST_TEMPLATES = {"layer_forward", "layer_delta", "layer_output", "layer_update", "take_rows"}


def test_no_identifier_is_defined_as_another_in_the_kernels_or_native_layer_h():
    """The native build reaches native_layer.h's code through the export macros that the kernel files
    leave to it under GPUBP_NATIVE, never by renaming a template with a #define."""
    for path in (native.LAYER_HEADER, *sorted(K.kernel_dir().glob("*.cu*"))):
        found = _RENAME.search(path.read_text())
        assert found is None, f"{path.name}: {found.group().strip()}"


def test_the_native_entries_are_the_gpus_and_the_layer_ones_call_native_layer_h():
    """In every kernel file the native build exports the GPU's entry points (names, parameters); the
    layer kernels' and the gather's call native_layer.h's host templates, every other the GPU's code."""
    seen = set()
    for file in K.kernel_files():
        code = native.native_code(file)
        assert K.parse_signatures(code) == K.parse_signatures(K.source(file)), file
        gpu, here = (dict(_ENTRY_CALL.findall(K.expand_macros(c))) for c in (K.source(file), code))
        assert here.keys() == gpu.keys() == K.parse_signatures(code).keys(), file
        for entry, callee in gpu.items():
            want = f"native_{callee}" if callee in HOST_TEMPLATES else callee
            assert here[entry] == want, f"{file}: the native {entry} calls {here[entry]}, not {want}"
            seen.add(callee)
    assert HOST_TEMPLATES <= seen


def test_which_entries_cooperate_is_read_from_the_code_it_compiles():
    """The layer kernels' entries reach native_layer.h's host code, which never cooperates, so they
    run serially; the evaluation's reductions cooperate here as on the emulator. No name decides it."""
    from gpubp.backends import emulated

    for file, serial, together in (("sigmoid.cu", "layer_forward_sigmoid_l_f32", None),
                                   ("layer_update.cu", "layer_update_s_f64", None),
                                   ("log_likelihood.cu", "layer_output_log_likelihood_f32", "log_likelihood_cost_f32"),
                                   ("argmax_count.cu", None, "argmax_count_f64")):
        here = emulated.cooperative_kernels(native.native_code(file))
        gpu = emulated.cooperative_kernels(K.source(file))
        if serial:
            assert serial in gpu and serial not in here, file
            assert f"GPUBP_EMU_ENTRY({serial}, false)" in native.translation_unit(file)
        if together:
            assert together in gpu and together in here, file
            assert f"GPUBP_EMU_ENTRY({together}, true)" in native.translation_unit(file)
