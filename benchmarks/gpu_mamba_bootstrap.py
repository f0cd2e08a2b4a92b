"""Make mamba-ssm's fused Mamba-2 path importable on a device machine that cannot reach PyPI.

The device image has no mamba-ssm, and building the whole package (its Mamba-1 selective-scan extension
alone) takes longer than a device lease. mbp calls one function, ``mamba_split_conv1d_scan_combined``: Triton
kernels plus causal-conv1d's CUDA extension. So this builds only that extension (for the local GPU's
architecture), and installs mamba-ssm's Python sources with an empty ``__init__`` (upstream's imports the
Mamba-1 extension unconditionally). Sources come from the sdists, unpacked beside the repo by the caller:

    python3 benchmarks/gpu_mamba_bootstrap.py SRC_DIR SITE_DIR

SRC_DIR holds ``mamba_ssm/`` and ``causal_conv1d_src/{csrc,causal_conv1d}`` (mamba-ssm 2.3.2.post1 and
causal-conv1d 1.7.0 sdists); SITE_DIR is a folder on PYTHONPATH.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

from torch.utils.cpp_extension import load

NVCC_FLAGS = [  # as causal-conv1d's setup.py passes them
    "-O3",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "--use_fast_math",
]


def split_instantiations(source: Path, out: Path) -> list[Path]:
    """One translation unit per explicit template instantiation, so the build spreads over every core
    (a whole upstream .cu file is one nvcc process; the backward one alone outlasted a 300 s budget)."""
    lines = source.read_text().splitlines(keepends=True)
    explicit = [line for line in lines if re.match(r"template void \w+<", line)]
    body = "".join(line for line in lines if line not in explicit)
    units = []
    for index, line in enumerate(explicit):
        unit = out / f"{source.stem}_{index}.cu"
        unit.write_text(f'#include "{source.resolve()}.body"\n{line}')
        units.append(unit)
    Path(f"{source.resolve()}.body").write_text(body)
    return units


def main(src: Path, site: Path) -> None:
    start = time.perf_counter()
    conv = src / "causal_conv1d_src"
    build = Path("/tmp/causal_conv1d_build")
    build.mkdir(exist_ok=True)
    load(
        name="causal_conv1d_cuda",
        sources=[str(conv / "csrc" / "causal_conv1d.cpp")]
        + [
            str(unit)
            for name in ("causal_conv1d_fwd.cu", "causal_conv1d_bwd.cu", "causal_conv1d_update.cu")
            for unit in split_instantiations(conv / "csrc" / name, build)
        ],
        extra_cflags=["-O3"],
        extra_cuda_cflags=NVCC_FLAGS,
        build_directory=str(build),
        verbose=False,
    )
    shutil.copy(build / "causal_conv1d_cuda.so", site / "causal_conv1d_cuda.so")
    shutil.copytree(conv / "causal_conv1d", site / "causal_conv1d", dirs_exist_ok=True)
    shutil.copytree(src / "mamba_ssm", site / "mamba_ssm", dirs_exist_ok=True)
    (site / "mamba_ssm" / "__init__.py").write_text('__version__ = "2.3.2.post1"\n')
    print(
        f"built causal_conv1d_cuda and installed mamba_ssm in {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
