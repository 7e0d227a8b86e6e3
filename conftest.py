"""Plugins for tests/ and benchmarks/: pytester, and --require-gpu with the gpu mark (gpu_marker.py)."""

pytest_plugins = ["pytester", "gpu_marker"]
