"""The README's commands work from a clone: the usage block matches the real flags, the examples
run, and every install hint names a real extra in a form that works from a clone."""

import argparse
import re
import shlex
import sys
from pathlib import Path

import pytest
from helpers import run_cli

from gpubp.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title):
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def blocks(text):
    return re.findall(r"```\n(.*?)```", text, flags=re.DOTALL)


def commands(block):
    """Each command of a block: a line starting with `uv run`, with its indented continuation lines."""
    out = []
    for line in block.splitlines():
        if line.startswith("uv run"):
            out.append(line)
        elif line.startswith(" ") and out:
            out[-1] += " " + line.strip()
    return out


def gpubp_argv(command):
    """The arguments after `gpubp` of `uv run [--extra X ...] gpubp ARGS`."""
    words = shlex.split(command)
    return words[words.index("gpubp") + 1:]


QUICK_START = ["python3 uvw.py run gpubp train", "python3 uvw.py run --extra test pytest"]


def test_the_quick_start_is_two_commands():
    (block,) = blocks(section("Quick start"))
    assert block.strip().splitlines() == QUICK_START


def test_ci_runs_the_readmes_test_command():
    assert QUICK_START[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def subparsers():
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_the_usage_block_lists_exactly_the_real_flags():
    usage = commands(blocks(section("Using it"))[0])
    documented = {}
    for c in usage:
        words = c.split()
        assert words[:3] == ["uv", "run", "gpubp"], c
        documented.setdefault(words[3], set()).update(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", " ".join(words[4:])))
    assert documented.pop("--version") == set()
    for name, parser in subparsers().items():
        real = {a.option_strings[0] for a in parser._actions if a.option_strings and a.option_strings[0] != "-h"}
        assert documented.get(name) == real, f"README usage of {name}: {sorted(documented.get(name, []))} " \
                                             f"!= {sorted(real)}"


def examples():
    return commands(blocks(section("Using it"))[1])


def test_every_example_parses():
    for c in examples():
        argv = gpubp_argv(c)
        build_parser().parse_args(argv)


def test_the_quick_examples_run(capsys, tmp_path, monkeypatch, mnist_dir):
    """The train, resume, evaluate and plot examples, in order, in an empty directory (one epoch each;
    the bench example takes minutes and is run by hand)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPUBP_DATA_DIR", mnist_dir)
    ran = 0
    for c in examples():
        argv = gpubp_argv(c)
        if argv[0] == "bench":
            continue
        argv = [("1" if prev == "--epochs" else a) for prev, a in zip([None, *argv], argv)]
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, f"{c}: {err}"
        ran += 1
    assert ran == 5 and {p.name for p in tmp_path.iterdir()} == {"model.npz", "run.json", "more.json", "slow.json",
                                                                   "curves.png"}


def install_hints():
    """(where, text) of every line in the README and the package that tells how to install something."""
    for path in [ROOT / "README.md", *sorted((ROOT / "gpubp").rglob("*.py"))]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if "--extra" in line or "pip install" in line or ".[" in line:
                yield f"{path.relative_to(ROOT)}:{i}", line


def test_install_hints_name_real_extras_in_forms_that_work_from_a_clone():
    tomllib = pytest.importorskip("tomllib")
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    seen = set()
    for where, line in install_hints():
        assert not re.search(r"pip install '?gpubp", line), f"{where}: gpubp is not on a package index: {line}"
        for name in re.findall(r"--extra[ =](\w+)", line) + re.findall(r"\.\[(\w+)\]", line):
            assert name in extras, f"{where}: no extra {name!r} in pyproject.toml: {line}"
            seen.add(name)
    assert {"plot", "cuda13", "cuda12", "test"} <= seen


def test_hints_printed_by_the_package_are_commands_from_the_clone(monkeypatch):
    from gpubp import sysinfo
    from gpubp.errors import GpubpError
    from gpubp.figures import pyplot

    assert "uv run --extra cuda13 gpubp" in sysinfo.GPU_INSTALL_HINT
    assert "pip install -e '.[cuda13]'" in sysinfo.GPU_INSTALL_HINT
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(GpubpError, match=r"uv run --extra plot gpubp plot \.\.\. or pip install -e '\.\[plot\]'"):
        pyplot("gpubp plot", "gpubp plot ...")


def test_the_python_example_prints_the_same_number_twice(capsys, tmp_path, monkeypatch, mnist_dir):
    """The README's Python example (an epoch where it says 30 or 5), run twice from scratch: one seed
    fixes the weights and the shuffle, so both runs print the same accuracy."""
    (code,) = re.findall(r"```python\n(.*?)```", section("Using it"), flags=re.DOTALL)[:1]
    assert "seed=1" in code and "epochs=30" in code
    code = re.sub(r"epochs=\d+", "epochs=1", code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPUBP_DATA_DIR", mnist_dir)
    printed = []
    for _ in range(2):
        exec(compile(code, "README.md", "exec"), {})
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and 0.8 < float(printed[0]) <= 1.0, printed


# ---------------------------------------------------------------------------------------------
# The quick start on a machine with Python and nothing else: uvw.py installs uv first. Here the
# PATH holds python3 alone, HOME is empty, and "uv" is a stand-in wheel served from a directory
# (pip) or a file:// index (the wheel path), so no test touches the internet.
# ---------------------------------------------------------------------------------------------

def stand_in_uv(wheel: Path, python: str) -> None:
    """A wheel named uv whose uv script prints its arguments, laid out as uv's real wheel is."""
    import zipfile

    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("uv-0.0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: uv\nVersion: 0.0.1\n")
        z.writestr("uv-0.0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                               "Tag: py3-none-any\n")
        z.writestr("uv-0.0.1.data/scripts/uv", f"#!{python}\nimport sys\nprint('stand-in uv', *sys.argv[1:])\n")
        z.writestr("uv-0.0.1.dist-info/RECORD", "")


@pytest.fixture
def python_only(tmp_path):
    """(environment, run): a PATH with python3 and no uv, an empty HOME, and a runner of uvw.py."""
    import os
    import subprocess

    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))  # not this test's venv
    (bin_dir / "python3").symlink_to(python)
    env = {"PATH": str(bin_dir), "HOME": str(home), "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def run(*args, **extra_env):
        return subprocess.run(["python3", str(ROOT / "uvw.py"), *args], capture_output=True, text=True,
                              env={**env, **extra_env}, cwd=tmp_path, timeout=300)
    return python, run


def test_the_quick_start_installs_uv_where_it_is_missing_with_pip(tmp_path, python_only):
    python, run = python_only
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    stand_in_uv(wheels / "uv-0.0.1-py3-none-any.whl", python)
    first = run("run", "gpubp", "train", PIP_FIND_LINKS=str(wheels))
    assert first.returncode == 0, first.stderr
    assert first.stdout == "stand-in uv run gpubp train\n" and "installing it into" in first.stderr
    again = run("run", "--extra", "test", "pytest")  # installed once: found again, without pip or network
    assert again.stdout == "stand-in uv run --extra test pytest\n" and again.stderr == ""


def test_the_quick_start_installs_uv_from_its_wheel_where_pip_cannot(tmp_path, python_only):
    import importlib.util
    import json

    python, run = python_only
    spec = importlib.util.spec_from_file_location("uvw", ROOT / "uvw.py")
    uvw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(uvw)
    wheel = tmp_path / f"uv-0.0.1-py3-none-{'_'.join(uvw.wheel_tags())}.whl"
    stand_in_uv(wheel, python)
    index = tmp_path / "uv.json"
    index.write_text(json.dumps({"urls": [{"filename": wheel.name, "url": wheel.as_uri()}]}))
    res = run("run", "gpubp", "train", UVW_PYPI=index.as_uri())  # PIP_NO_INDEX with no links: pip fails
    assert res.returncode == 0, res.stderr
    assert res.stdout == "stand-in uv run gpubp train\n" and "fetching its wheel from PyPI" in res.stderr


def test_what_the_examples_write_is_ignored_by_git():
    """Run from the clone's root, the examples must not leave untracked files behind."""
    ignored = set((ROOT / ".gitignore").read_text().splitlines())
    flags = {"--save", "--metrics-out", "-o", "--json", "--plot"}
    written = {a for c in examples() for prev, a in zip(gpubp_argv(c), gpubp_argv(c)[1:]) if prev in flags}
    assert written and {f"/{name}" for name in written} <= ignored, sorted(written)


def test_the_quick_start_names_the_default_initialisation():
    from gpubp import Network

    text = " ".join(section("Quick start").split())
    assert Network([784, 30, 10]).init == "network2" and "with network2's initialisation" in text
    assert "--init large` gives network.py's N(0, 1)" in text
