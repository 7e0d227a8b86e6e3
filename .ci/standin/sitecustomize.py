"""For `.ci/gpu-check --dry-run` only (on PYTHONPATH then): every Python process of the check starts
with tests/cupy_standin.py installed in place of CuPy, so the check's stages run without a GPU."""

import os
import sys

if os.environ.get("GPUBP_GPU_CHECK_DRY_RUN"):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
    from cupy_standin import install

    class _Patch:
        """What install() asks of pytest's monkeypatch, for the life of the process."""

        @staticmethod
        def setitem(mapping, key, value):
            mapping[key] = value

        @staticmethod
        def setattr(target, name, value):
            setattr(target, name, value)

    install(_Patch())
