"""uv, installed first where it is missing: `python3 uvw.py run gpubp train` is `uv run gpubp train`
on a machine that has Python and nothing else (a wrapper, as gradlew is for Gradle).

uv is taken from PATH; else from the copy this script installed before, under
$XDG_CACHE_HOME/gpubp/uv (~/.cache/gpubp/uv); else it is installed there, once: by pip
(`pip install --target`, which needs no virtual environment and leaves the system's packages
alone), or, where pip is missing or refuses, from uv's wheel on PyPI, unpacked with zipfile.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

EXE = "uv.exe" if os.name == "nt" else "uv"


def cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "gpubp" / "uv"


def installed() -> Path | None:
    """The uv this script installed before, if any: pip's copy, then the unpacked wheel's."""
    return next((p for p in (cache() / "pip" / "bin" / EXE, cache() / "pip" / "Scripts" / EXE, cache() / "bin" / EXE)
                 if p.is_file()), None)


def by_pip() -> Path | None:
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          "--target", str(cache() / "pip"), "uv"], capture_output=True, text=True)
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["pip failed"])[-1]
        print(f"uvw: pip could not install uv ({why}); fetching its wheel from PyPI instead", file=sys.stderr)
        return None
    return installed()


def wheel_tags() -> tuple[str, ...]:
    """Words the name of uv's wheel for this machine contains (PyPI lists one per platform)."""
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64" if sys.platform.startswith("linux") else "arm64"}.get(machine,
                                                                                                         machine)
    if sys.platform.startswith("linux"):
        return ("manylinux", machine)
    if sys.platform == "darwin":
        return ("macosx", "arm64" if machine in ("arm64", "aarch64") else "x86_64")
    return ("win", "amd64" if machine == "x86_64" else machine)


def by_wheel() -> Path:
    index = os.environ.get("UVW_PYPI", "https://pypi.org/pypi/uv/json")
    with urllib.request.urlopen(index, timeout=60) as r:
        release = json.load(r)
    tags = wheel_tags()
    url = next((urllib.parse.urljoin(index, f["url"]) for f in release["urls"]
                if f["filename"].endswith(".whl") and all(t in f["filename"] for t in tags)), None)
    if url is None:
        raise SystemExit(f"uvw: PyPI has no uv wheel for {' '.join(tags)}: install uv by hand "
                         f"(https://docs.astral.sh/uv/getting-started/installation/)")
    target = cache() / "bin" / EXE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        whl = Path(tmp) / "uv.whl"
        with urllib.request.urlopen(url, timeout=300) as r, open(whl, "wb") as f:
            shutil.copyfileobj(r, f)
        with zipfile.ZipFile(whl) as z:
            member = next(n for n in z.namelist() if n.endswith(f".data/scripts/{EXE}"))
            (Path(tmp) / EXE).write_bytes(z.read(member))
        os.chmod(Path(tmp) / EXE, 0o755)
        os.replace(Path(tmp) / EXE, target)
    return target


def find_or_install() -> str:
    found = shutil.which("uv") or installed()
    if found:
        return str(found)
    print(f"uvw: uv is not on PATH: installing it into {cache()} (once)", file=sys.stderr)
    try:
        uv = by_pip() or by_wheel()
    except (OSError, ValueError, KeyError, StopIteration, zipfile.BadZipFile) as e:
        raise SystemExit(f"uvw: could not install uv ({getattr(e, 'reason', None) or e}): install it by hand "
                         f"(https://docs.astral.sh/uv/getting-started/installation/), then run uv "
                         f"{' '.join(sys.argv[1:])}") from None
    mode = os.stat(uv).st_mode
    os.chmod(uv, mode | stat.S_IXUSR)
    return str(uv)


def main() -> None:
    uv = find_or_install()
    if os.name == "nt":  # no exec on Windows: run it and pass its status on
        sys.exit(subprocess.run([uv, *sys.argv[1:]]).returncode)
    os.execv(uv, [uv, *sys.argv[1:]])


if __name__ == "__main__":
    main()
