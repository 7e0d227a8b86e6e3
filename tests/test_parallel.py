"""The whole suite on every core (conftest.py at the root): when a run is spread over pytest-xdist's
workers, and that a worker, or anything a test starts, never spreads again."""

from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = spec_from_file_location("root_conftest", ROOT / "conftest.py")
root_conftest = module_from_spec(spec)
spec.loader.exec_module(root_conftest)

WHOLE = pytest.Config.ArgsSource.TESTPATHS


def config(args_source=WHOLE, keyword="", markexpr="not ray", xdist=True, **option):
    """What pytest_cmdline_main reads of a Config, as `pytest` with no arguments gives it."""
    o = SimpleNamespace(numprocesses=None, dist="no", tx=[], usepdb=False, trace=False, collectonly=False,
                        loadscopereorder=True, keyword=keyword, markexpr=markexpr)
    o.__dict__.update(option)
    return SimpleNamespace(option=o, args_source=args_source, pluginmanager=SimpleNamespace(hasplugin=lambda n: xdist),
                           getini=lambda name: ["-ra", "-m", "not ray"] if name == "addopts" else [])


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.setattr(root_conftest, "cores", lambda: 2)


def test_the_whole_suite_runs_whole_files_on_every_core(two_cores, monkeypatch):
    c = config()
    root_conftest.pytest_cmdline_main(c)
    assert (c.option.numprocesses, c.option.dist, c.option.loadscopereorder) == (2, "loadfile", False)
    monkeypatch.setattr(root_conftest, "cores", lambda: 64)
    c = config()
    root_conftest.pytest_cmdline_main(c)
    assert c.option.numprocesses == root_conftest.MAX_WORKERS


@pytest.mark.parametrize("what", [
    dict(args_source=pytest.Config.ArgsSource.ARGS), dict(keyword="sweep"), dict(markexpr="ray"),
    dict(markexpr="gpu"), dict(numprocesses=0), dict(dist="loadscope"), dict(usepdb=True), dict(collectonly=True),
    dict(xdist=False)], ids=str)
def test_anything_narrower_or_chosen_runs_as_asked(two_cores, what):
    c = config(**what)
    before = dict(vars(c.option))
    root_conftest.pytest_cmdline_main(c)
    assert vars(c.option) == before


def test_a_worker_never_starts_workers(two_cores, monkeypatch):
    c = config()
    c.workerinput = {"workerid": "gw0"}  # what xdist gives a worker's Config
    root_conftest.pytest_cmdline_main(c)
    assert c.option.numprocesses is None and c.option.dist == "no"
    c = config()  # a process started by a test on a worker: it inherits the worker's environment
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    root_conftest.pytest_cmdline_main(c)
    assert c.option.numprocesses is None and c.option.dist == "no"


def test_one_core_runs_one_process(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.setattr(root_conftest, "cores", lambda: 1)
    c = config()
    root_conftest.pytest_cmdline_main(c)
    assert c.option.numprocesses is None


def test_files_with_an_early_test_come_first_in_their_order():
    def item(path, early=False):
        return SimpleNamespace(path=Path(path), get_closest_marker=lambda name: early and name == "early" or None)

    items = [item("a.py"), item("b.py"), item("c.py", early=True), item("b.py", early=True), item("c.py"), item("d.py")]
    root_conftest.pytest_collection_modifyitems(None, items)
    assert [str(i.path) for i in items] == ["b.py", "c.py", "b.py", "c.py", "a.py", "d.py"]
