"""Backend selection: every branch of the CuPy probe, driven by a fake cupy module."""

import sys
import types

import numpy as np
import pytest
from helpers import assert_close

import gpubp.backends as B
from gpubp import sysinfo
from gpubp.errors import BackendUnavailable, GpubpError


@pytest.fixture
def fresh(monkeypatch):
    B.reset()
    monkeypatch.delenv("GPUBP_BACKEND", raising=False)
    yield monkeypatch
    B.reset()


def fake_cupy(count=None, error=None, name=b"Fake GPU"):
    cp = types.ModuleType("cupy")
    rt = types.SimpleNamespace()

    def get_count():
        if error:
            raise RuntimeError(error)
        return count

    rt.getDeviceCount = get_count
    rt.getDeviceProperties = lambda i: {"name": name}

    class Device:
        id = 0
        compute_capability = "90"
        attributes = {"MultiProcessorCount": 132}

    cp.cuda = types.SimpleNamespace(runtime=rt, Device=Device)
    cp.ndarray = np.ndarray
    return cp


def test_not_installed(fresh):
    fresh.setitem(sys.modules, "cupy", None)  # makes "import cupy" raise ImportError
    ok, why = B.cupy_status()
    assert not ok and "not installed" in why
    be = B.get_backend("auto")
    assert be.name == "numpy" and "not installed" in be.reason
    with pytest.raises(BackendUnavailable, match="cupy.*not installed"):
        B.get_backend("cupy")


INSUFFICIENT = "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"


def test_import_ok_but_no_driver_at_all(fresh):
    """CUDA says 'driver version is insufficient' when there is no driver: we say what is true."""
    fresh.setattr(sysinfo, "driver_installed", lambda: False)
    fresh.setitem(sys.modules, "cupy", fake_cupy(error=INSUFFICIENT))
    assert B.get_backend("auto").name == "numpy"
    with pytest.raises(BackendUnavailable, match="no NVIDIA driver is installed") as e:
        B.get_backend("cupy")
    assert "insufficient" not in str(e.value)


def test_import_ok_but_driver_too_old(fresh):
    fresh.setattr(sysinfo, "driver_installed", lambda: True)
    fresh.setitem(sys.modules, "cupy", fake_cupy(error=INSUFFICIENT))
    with pytest.raises(BackendUnavailable, match="driver is older than this CuPy's CUDA runtime.*cuda12"):
        B.get_backend("cupy")


def test_import_ok_but_no_device(fresh):
    fresh.setitem(sys.modules, "cupy", fake_cupy(error="cudaErrorNoDevice: no CUDA-capable device is detected"))
    be = B.get_backend("auto")
    assert be.name == "numpy" and "no CUDA device" in be.reason
    B.reset()
    fresh.setitem(sys.modules, "cupy", fake_cupy(count=0))
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        B.get_backend("cupy")


def test_device_ok_is_chosen_by_auto(fresh):
    fresh.setitem(sys.modules, "cupy", fake_cupy(count=1))
    ok, why = B.cupy_status()
    assert ok and "Fake GPU" in why
    be = B.get_backend("auto")
    assert be.name == "cupy" and be.sm_count == 132 and "Fake GPU" in be.device and "Fake GPU" in be.reason


def test_probe_runs_once(fresh):
    calls = []
    cp = fake_cupy(count=1)
    cp.cuda.runtime.getDeviceCount = lambda: calls.append(1) or 1
    fresh.setitem(sys.modules, "cupy", cp)
    for _ in range(3):
        B.cupy_status()
    assert calls == [1]


def test_environment_variable_and_bad_names(fresh):
    fresh.setenv("GPUBP_BACKEND", "numpy")
    assert B.get_backend().name == "numpy"
    fresh.setenv("GPUBP_BACKEND", "emulated")
    assert B.get_backend().name == "emulated"
    with pytest.raises(GpubpError, match="unknown backend 'tpu'"):
        B.get_backend("tpu")
    fresh.setenv("GPUBP_BACKEND", "tpu")  # a bad variable is named, so the user knows where it came from
    with pytest.raises(GpubpError, match=r"unknown backend \$GPUBP_BACKEND='tpu'"):
        B.get_backend()


def test_registry_names_every_backend_once():
    assert B.BACKEND_NAMES == ("auto", *B.REGISTRY)
    for name in B.REGISTRY:
        ok, why = B.probe(name)
        assert isinstance(ok, bool) and why


def test_emulated_without_a_compiler_is_a_clear_error(fresh):
    fresh.setenv("CXX", "")
    fresh.setenv("PATH", "/nonexistent")
    with pytest.raises(BackendUnavailable, match="C\\+\\+ compiler"):
        B.get_backend("emulated")


def test_counters_count_what_a_block_asks():
    be = B.get_backend("numpy")
    a = np.ones((3, 4), np.float32)
    with be.counters() as c:
        d = be.to_device(a)
        be.matmul(d, d.T, out=be.empty((3, 3), np.float32))
        be.to_host(d)
        be.synchronize()
    assert c.as_dict() == {"launches": 0, "gemms": 1, "h2d": 1, "d2h": 1, "syncs": 1, "allocs": 1,
                           "graph_launches": 0}


@pytest.mark.parametrize("blas", ["numpy's own", "scipy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_host_gemm_writes_alpha_ab_plus_beta_out_in_place(dtype, layout, blas, monkeypatch):
    """The fused update's product: out <- alpha a b + beta out, for transposed views and both layouts,
    through NumPy's own CBLAS and through SciPy's BLAS where that cannot be found."""
    from gpubp.backends import hostblas

    if blas == "scipy":
        monkeypatch.setattr(hostblas, "numpy_cblas", lambda: None)
    else:
        assert hostblas.uses_numpy_pool(), "NumPy's CBLAS was not found in this process"
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((7, 5)), rng.standard_normal((9, 7))
    out0 = rng.standard_normal((5, 9))
    out = np.array(out0, dtype=dtype, order=layout)
    ptr = out.ctypes.data
    B.get_backend("numpy").gemm(a.T.astype(dtype), b.T.astype(dtype), out, alpha=-0.3, beta=0.99)
    expected = -0.3 * (a.T.astype(dtype).astype(float) @ b.T.astype(dtype).astype(float)) + 0.99 * out0.astype(dtype)
    assert out.ctypes.data == ptr  # in place
    tol = 1e-5 if dtype == np.float32 else 1e-13
    assert_close(out, expected, atol=tol, rtol=tol)


def test_no_backend_module_imports_the_data_module():
    """The compiled-kernel caches and MNIST share gpubp.cache's root; a backend has no business with IDX files."""
    import ast
    from pathlib import Path

    for path in sorted(Path(B.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
                assert "data" not in {n.split(".")[-1] for n in names}, f"{path.name} imports gpubp.data"


def test_the_cache_root_follows_xdg_cache_home(monkeypatch, tmp_path):
    from gpubp import cache, data
    from gpubp.backends import emulated, native

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("GPUBP_DATA_DIR", raising=False)
    assert cache.cache_root() == tmp_path / "gpubp"
    assert data.resolve_dir(None)[0] == tmp_path / "gpubp" / "mnist"
    assert emulated.cache_dir() == tmp_path / "gpubp" / "emulated"
    assert native.cache_dir() == tmp_path / "gpubp" / "native"


def test_host_backends_share_one_array_plumbing_and_the_base_has_no_host_branch():
    """numpy, emulated and native take HostArrays; Backend itself is written for a device's memory."""
    import inspect

    from gpubp.backends import base
    from gpubp.backends.host import HostArrays

    runnable = [name for name in B.REGISTRY if B.probe(name)[0]]  # no GPU here: the host backends
    assert len(runnable) >= 3
    for name in runnable:
        be = B.get_backend(name)
        assert isinstance(be, HostArrays) == (be.xp is np), name
    source = inspect.getsource(base)
    assert "is np" not in source and "is not np" not in source and "capturing:" not in source


def test_the_cupy_backend_keeps_device_memory_plumbing(cupy_be):
    from gpubp.backends.host import HostArrays

    be, _ = cupy_be
    assert not isinstance(be, HostArrays) and not be.gathers_per_step and be.preferred_gemm == "blas"


@pytest.mark.parametrize("backend", ["emulated", "native"])
def test_layer_kernels_come_from_the_backend_with_their_tile_and_grid(backend):
    """A tiled layer kernel gets the tile that suits its product (more blocks than 2 per SM: the
    large one), an output layer's kernel its one tile; the launcher computes the product."""
    from gpubp.backends import kernel as K

    be = B.get_backend(backend)
    big, out = K.tiles()["TileLarge"], K.tiles()["TileOutput"]
    wide = (3 * big["BM"] * be.sm_count + 1, big["BN"] + 1)  # at least 2 blocks per SM in TileLarge
    name, grid, block = be.layer_entry("layer_forward_relu", *wide, np.float32)
    assert (name, (grid, block)) == ("layer_forward_relu_l_f32", K.layer_launch(*wide, "TileLarge"))
    name, grid, block = be.layer_entry("layer_forward_relu", 3, 5, np.float64)
    assert (name, (grid, block)) == ("layer_forward_relu_s_f64", K.layer_launch(3, 5, "TileSmall"))
    name, grid, _ = be.layer_entry("layer_output_log_likelihood", 37, out["BN"] - 1, np.float64)
    assert name == "layer_output_log_likelihood_f64" and grid == K.layer_launch(37, out["BN"] - 1, "TileOutput")[0]
    with pytest.raises(GpubpError, match="no layer kernel named 'layer_forward_swish_f32'"):
        be.layer_entry("layer_forward_swish", 3, 5, np.float32)
    rng = np.random.default_rng(8)
    m, n_in, n_out = 37, 41, 19  # no tile's multiple
    A_in, W, b = rng.standard_normal((m, n_in)), rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out)
    A_in[3, 5], W[2, 7] = 1000.0, -1000.0
    A_out = np.full((m, n_out), np.nan)
    be.layer_kernel("layer_forward_relu", m, n_out, np.float64)(A_out, A_in, W, b, m, n_in, n_out, 0)
    expected = np.maximum(A_in @ W.T + b, 0.0)
    scale = np.abs(A_in) @ np.abs(W).T + np.abs(b)
    assert_close(A_out, expected, atol=1e-15, rtol=2e-14, scale=scale, what=f"{backend} layer_forward_relu")
