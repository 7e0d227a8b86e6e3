"""--require-gpu: a missing GPU fails the gpu-marked tests instead of skipping them."""

from pathlib import Path

from gpubp.backends import cupy_status

ROOT = Path(__file__).resolve().parents[1]


def test_require_gpu_turns_skips_into_failures(pytester):
    pytester.syspathinsert(ROOT)
    pytester.makeconftest('pytest_plugins = ["gpu_marker"]\n')  # the plugin this repository's tests load
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    pytester.makepyfile("import pytest\n\n@pytest.mark.gpu\ndef test_on_gpu():\n    pass\n\n"
                        "def test_on_cpu():\n    pass\n")
    has_gpu = cupy_status()[0]
    plain = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    plain.assert_outcomes(passed=2 if has_gpu else 1, skipped=0 if has_gpu else 1)
    strict = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--require-gpu")
    strict.assert_outcomes(passed=2 if has_gpu else 1, errors=0 if has_gpu else 1)
    if not has_gpu:
        strict.stdout.fnmatch_lines(["*--require-gpu was given but no GPU is usable*"])
