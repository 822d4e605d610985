"""The real TensorRT Python bindings of one version, importable here without TensorRT or a GPU.

``tensorrt-cuNN-bindings`` wheels hold only ``tensorrt_bindings/tensorrt.so``; it links against TensorRT's native
libraries (``libnvinfer.so.N``, ``libnvinfer_plugin.so.N``, ``libnvonnxparser.so.N``) but needs just a handful of C
symbols from them to load. Link-only stand-ins that define those symbols (read from the .so with
``nm -D --undefined-only``, compiled with gcc) let ``import tensorrt_bindings`` succeed: nothing can be built or run,
but every class, method, enum member and pybind11 signature of that exact version can be inspected.

The wheels are fetched once with ``pip download --no-deps`` into the repository's ignored ``.cache/`` folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "tensorrt-bindings"
# One wheel per supported major version (the newest 10.x for CUDA 12, the newest 11.x on PyPI).
WHEELS = {10: ("tensorrt-cu12-bindings", "10.13.3.9"), 11: ("tensorrt-cu13-bindings", "11.4.0.106")}
TRT_LIBRARIES = ("nvinfer", "nvinfer_plugin", "nvonnxparser")


class Unavailable(Exception):
    """The bindings cannot be prepared here (no network, no gcc/nm, no wheel for this Python); the reason."""


@dataclass(frozen=True)
class Bindings:
    major: int
    version: str
    site: Path  # holds tensorrt_bindings/ and a ``tensorrt`` shim importing it
    libs: Path  # the stand-in libraries

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(self.libs)] + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
        env["PYTHONPATH"] = os.pathsep.join([str(self.site), str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
        return env

    def python(self, code: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, text=True,
                              env=self.env(), cwd=str(REPO), timeout=timeout)


def trt_symbols(so: Path) -> list[str]:
    """The unversioned C symbols the bindings import from TensorRT's libraries (not libc, libstdc++ or Python)."""
    if shutil.which("nm") is None:
        raise Unavailable("nm (binutils) is not installed")
    out = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True, text=True, check=True)
    names = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] != "U" or "@" in parts[1]:
            continue
        name = parts[1]
        if name.startswith(("Py", "_Py", "_Z", "dl", "__")):
            continue
        names.append(name)
    if not names:
        raise Unavailable(f"nm found no TensorRT symbols in {so.name}")
    return sorted(names)


def _build_stubs(so: Path, major: int, libs: Path) -> None:
    if shutil.which("gcc") is None:
        raise Unavailable("gcc is not installed (needed to build the stand-in TensorRT libraries)")
    libs.mkdir(parents=True, exist_ok=True)
    source = libs / "trt_stand_in.c"
    source.write_text("".join(f"void *{name}(void) {{ return 0; }}\n" for name in trt_symbols(so)))
    for lib in TRT_LIBRARIES:
        soname = f"lib{lib}.so.{major}"
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(libs / soname), f"-Wl,-soname,{soname}", str(source)],
                       check=True, capture_output=True)


def prepare(major: int) -> Bindings:
    """Download (once), unpack and make importable the bindings of TensorRT ``major``."""
    package, version = WHEELS[major]
    root = CACHE / f"{package}-{version}-py{sys.version_info.major}{sys.version_info.minor}"
    done = root / ".ready"
    site, libs = root / "site", root / "lib"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        wheels = root / "wheels"
        wheels.mkdir(parents=True)
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                            "-d", str(wheels), f"{package}=={version}"], check=True, capture_output=True,
                           text=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            shutil.rmtree(root, ignore_errors=True)
            tail = (getattr(e, "stderr", "") or "").strip().splitlines()[-1:] or [type(e).__name__]
            raise Unavailable(f"pip download {package}=={version} failed ({tail[0][:200]})") from None
        wheel = next(wheels.glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
        shim = site / "tensorrt"
        shim.mkdir()
        # The real ``tensorrt`` package re-exports the bindings the same way.
        shim.joinpath("__init__.py").write_text("from tensorrt_bindings import *  # noqa: F401,F403\n"
                                                "from tensorrt_bindings import __version__  # noqa: F401\n")
        try:
            _build_stubs(site / "tensorrt_bindings" / "tensorrt.so", major, libs)
        except (Unavailable, subprocess.CalledProcessError) as e:
            shutil.rmtree(root, ignore_errors=True)
            raise Unavailable(str(e)) from None
        done.write_text(version)
    bindings = Bindings(major, version, site, libs)
    probe = bindings.python("import tensorrt; print(tensorrt.__version__)")
    if probe.returncode != 0 or probe.stdout.strip() != version:
        raise Unavailable(f"the {version} bindings do not import with stand-in libraries: "
                          f"{(probe.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    return bindings
