"""Registers, shared memory and occupancy on sm_90 of every kernel, from `nvcc -Xptxas -v`.

    python tests/kernel_resources.py           prints the table
    python tests/kernel_resources.py --write   rewrites each kernels/*.cu header's "sm_90:" block

tests/test_kernels.py checks that every header states what nvcc reports now, so the numbers in
the headers cannot go stale. Occupancy follows the CUDA occupancy calculator's rules for compute
capability 9.0 (H100): 2048 threads, 64 warps, 32 blocks and 65,536 registers per SM, registers
allocated per warp in units of 256, 228 KB (233,472 B) of shared memory per SM of which each block
also reserves 1 KB, allocated in units of 128 B.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from gpubp.backends import kernel as K

THREADS = 256  # every kernel's block (1-D kernels: BLOCK; layer kernels: 16 x 16 threads of a tile)
SM90 = {"threads": 2048, "warps": 64, "blocks": 32, "regs": 65536, "reg_unit": 256, "smem": 233472,
        "smem_reserved": 1024, "smem_unit": 128}
MARK = "// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy"


def occupancy(regs: int, smem: int, threads: int = THREADS) -> tuple[float, str]:
    """(fraction of the SM's warps resident, what limits it) for one kernel on sm_90."""
    warps = -(-threads // 32)
    per_warp = -(-regs * 32 // SM90["reg_unit"]) * SM90["reg_unit"]
    limits = {"threads": SM90["threads"] // threads, "blocks": SM90["blocks"],
              "registers": (SM90["regs"] // per_warp) // warps if regs else SM90["blocks"]}
    if smem:
        limits["shared memory"] = SM90["smem"] // (-(-smem // SM90["smem_unit"]) * SM90["smem_unit"]
                                                    + SM90["smem_reserved"])
    blocks = min(limits.values())
    return blocks * warps / SM90["warps"], min(limits, key=limits.get)


def parse(ptxas: str) -> dict[str, tuple[int, int]]:
    """{kernel: (registers, static shared bytes)} at sm_90 from `nvcc -Xptxas -v`'s report."""
    out = {}
    for name, body in re.findall(r"Compiling entry function '(\w+)' for 'sm_90'(.*?)(?=Compiling entry|\Z)",
                                 ptxas, re.DOTALL):
        regs = re.search(r"Used (\d+) registers", body)
        smem = re.search(r"(\d+) bytes smem", body)
        out[name] = (int(regs.group(1)), int(smem.group(1)) if smem else 0)
    return out


def measure(file: str) -> dict[str, tuple[int, int]]:
    """{kernel: (registers, static shared bytes)} at sm_90 for one kernel file."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / file
        src.write_text(K.source(file))
        p = subprocess.run(["nvcc", "-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v", "--fatbin", "-o", os.devnull,
                            str(src)], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stderr)
    return parse(p.stderr)


def block(file: str, resources: dict | None = None) -> str:
    """The header lines that state each kernel's resources on sm_90 (measured now unless given)."""
    lines = [MARK]
    for name, (regs, smem) in sorted((resources or measure(file)).items()):
        occ, limit = occupancy(regs, smem)
        lines.append(f"//   {name:32s} {regs:3d} regs {smem:6d} B smem {occ:4.0%} occupancy ({limit})")
    return "\n".join(lines) + "\n"


def stated(file: str) -> str | None:
    """The sm_90 block a header states now, or None."""
    text = (K.kernel_dir() / file).read_text()
    m = re.search(re.escape(MARK) + r"\n(?://   [^\n]*\n)*", text)
    return m.group() if m else None


def write(file: str) -> None:
    path = K.kernel_dir() / file
    text = path.read_text()
    new, old = block(file), stated(file)
    text = text.replace(old, new) if old else text.replace("#include", new + "#include", 1)
    path.write_text(text)


if __name__ == "__main__":
    for f in K.kernel_files():
        if "--write" in sys.argv:
            write(f)
        print(f"{f}:\n{block(f)}")
