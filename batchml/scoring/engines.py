"""Prediction engines: LightGBM's own predict, or the same trees compiled to machine code on this machine.

    lightgbm   Booster.predict; the reference every other engine is checked against
    tl2cgen    treelite -> C -> shared library built with gcc; bit-exact on LightGBM models
    lleaves    LLVM-compiled trees; several times faster, last-bit differences (softmax, sums)

A compiled engine is built once per model version from the hash-checked model text and kept in the local
cache (`engine_cache.py`) under (model sha256, engine, engine version, platform). Every engine predicts what
`Booster.predict` returns, in its shape: (rows,) for binary and regression, (rows, classes) for multiclass.
Calls into a compiled library release the GIL, so several batches predict at once on several cores.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import json
import logging
import shutil
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from batchml.errors import ConfigError, IntegrityError
from batchml.models.lineage import engine as lightgbm_version
from batchml.scoring.engine_cache import cached_build

if TYPE_CHECKING:
    import lightgbm as lgb

log = logging.getLogger(__name__)

LIGHTGBM = "lightgbm"
#: Compiled engines, fastest first where both are available and exact enough.
COMPILED = ("lleaves", "tl2cgen")
ENGINES = (LIGHTGBM, *COMPILED)
_INSTALL = "install them with `pip install 'batchml[engines]'`"


class Engine(Protocol):
    """Predicts like `Booster.predict` (probabilities, raw for regression), safe to call from threads."""

    name: str
    #: Name and versions of what computes the predictions, e.g. `lleaves==1.3.0+llvmlite==0.44.0+cpu=znver3`;
    #: part of the run key: another version may round differently.
    version: str

    def predict(self, matrix: np.ndarray, threads: int = 0) -> np.ndarray:
        """Predictions for the rows of `matrix` using `threads` threads (0: the engine's default)."""
        ...


class LightGBMEngine:
    """LightGBM's own predict (the default, and the reference)."""

    name = LIGHTGBM

    def __init__(self, booster: lgb.Booster) -> None:
        self.booster = booster
        self.version = lightgbm_version()  # as run keys have always named it

    def predict(self, matrix: np.ndarray, threads: int = 0) -> np.ndarray:
        """`Booster.predict` with `num_threads=threads`."""
        return np.asarray(self.booster.predict(matrix, num_threads=threads))


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not-installed"


@functools.cache
def _gcc_version() -> str | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    try:
        done = subprocess.run(
            [gcc, "-dumpfullversion"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def unavailable(name: str) -> str | None:
    """Why engine `name` cannot be built or run here (a package or the compiler is missing), or None."""
    if name == LIGHTGBM:
        return None
    if name == "lleaves":
        for package in ("lleaves", "llvmlite"):
            if importlib.util.find_spec(package) is None:
                return f"package {package} is not installed ({_INSTALL})"
        llvmlite = tuple(int(p) for p in _version("llvmlite").split(".")[:2] if p.isdigit())
        if llvmlite >= (0, 45):
            return f"lleaves needs llvmlite<0.45, found llvmlite {_version('llvmlite')}"
        return None
    if name == "tl2cgen":
        for package in ("tl2cgen", "treelite"):
            if importlib.util.find_spec(package) is None:
                return f"package {package} is not installed ({_INSTALL})"
        if _gcc_version() is None:
            return "no working gcc on PATH: tl2cgen compiles the model to C"
        return None
    raise ValueError(f"unknown scoring engine {name!r}: use one of {', '.join(ENGINES)}")


@functools.cache
def engine_version(name: str) -> str:
    """What the run key calls engine `name` on this machine (its packages, compiler or CPU)."""
    if name == LIGHTGBM:
        return lightgbm_version()
    if name == "lleaves":
        import llvmlite.binding as llvm

        # lleaves compiles for the host CPU: an object built on another CPU model may not run here.
        cpu = llvm.get_host_cpu_name()
        return f"lleaves=={_version('lleaves')}+llvmlite=={_version('llvmlite')}+cpu={cpu}"
    gcc = _gcc_version()
    return f"tl2cgen=={_version('tl2cgen')}+treelite=={_version('treelite')}+gcc=={gcc}"


class _Lleaves:
    name = "lleaves"
    #: How it compiles (lleaves' defaults, stated): part of the cache key, since they change the code.
    options: ClassVar[dict[str, Any]] = {"fblocksize": 34, "finline": True, "fcodemodel": "large"}

    def __init__(self, folder: Path, version: str) -> None:
        import lleaves

        self.version = version
        self.model = lleaves.Model(model_file=str(folder / "model.txt"))
        # an existing cache file is loaded, not rebuilt
        self.model.compile(cache=str(folder / "model.o"), **self.options)

    @staticmethod
    def build(folder: Path) -> None:
        import lleaves

        model = lleaves.Model(model_file=str(folder / "model.txt"))
        model.compile(cache=str(folder / "model.o"), **_Lleaves.options)

    def predict(self, matrix: np.ndarray, threads: int = 0) -> np.ndarray:
        data = np.ascontiguousarray(matrix, dtype=np.float64)
        return np.asarray(self.model.predict(data, n_jobs=threads or None))


@functools.cache
def _quiet_treelite() -> None:
    """Send treelite's and tl2cgen's native log lines to logging: they print to stdout (and --json)."""
    import tl2cgen.libloader
    import treelite.core

    @ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    def to_log(message: bytes) -> None:
        log.debug("tl2cgen: %s", message.decode(errors="replace").strip())

    _quiet_treelite.callback = to_log  # type: ignore[attr-defined]  # ctypes needs it alive
    tl2cgen.libloader._LIB.TL2cgenRegisterLogCallback(to_log)
    treelite.core._LIB.TreeliteRegisterLogCallback(to_log)


class _Tl2cgen:
    name = "tl2cgen"
    #: `parallel_comp`: translation units gcc compiles side by side. Part of the cache key.
    options: ClassVar[dict[str, Any]] = {"parallel_comp": 8}

    def __init__(self, folder: Path, version: str) -> None:
        _quiet_treelite()
        self.version, self.library = version, str(folder / "model.so")
        self.local = threading.local()  # one predictor per thread and thread count

    @staticmethod
    def build(folder: Path) -> None:
        import tl2cgen
        import treelite

        _quiet_treelite()
        model = treelite.frontend.load_lightgbm_model(str(folder / "model.txt"))
        libpath = str(folder / "model.so")
        tl2cgen.export_lib(model, toolchain="gcc", libpath=libpath, params=dict(_Tl2cgen.options))

    def predict(self, matrix: np.ndarray, threads: int = 0) -> np.ndarray:
        import tl2cgen

        predictors = self.local.__dict__.setdefault("predictors", {})
        if threads not in predictors:
            predictors[threads] = tl2cgen.Predictor(self.library, nthread=threads or -1)
        data = tl2cgen.DMatrix(np.ascontiguousarray(matrix, dtype=np.float64), dtype="float64")
        out = np.asarray(predictors[threads].predict(data))
        return out.reshape(len(matrix)) if out.shape[-1] == 1 else out.reshape(len(matrix), out.shape[-1])


_COMPILERS: dict[str, Any] = {"lleaves": _Lleaves, "tl2cgen": _Tl2cgen}


def compiled(name: str, model_text: bytes, model_sha256: str) -> tuple[Engine, dict[str, Any]]:
    """Engine `name` for this model, from the local cache or compiled now; with its cache entry facts
    (`compile_seconds`, `built`: whether this call compiled it). Raises when the engine is unavailable."""
    why = unavailable(name)
    if why is not None:
        raise ConfigError(f"scoring engine {name!r} is not available here: {why}")
    actual = hashlib.sha256(model_text).hexdigest()
    if actual != model_sha256:  # only hash-checked model text is ever compiled
        raise IntegrityError(f"model text for engine {name}", model_sha256, actual)
    kind, version = _COMPILERS[name], engine_version(name)

    def build(folder: Path) -> dict[str, Any]:
        started = time.perf_counter()
        (folder / "model.txt").write_bytes(model_text)
        kind.build(folder)
        seconds = round(time.perf_counter() - started, 3)
        log.info("compiled model %s… with %s in %.1f s", model_sha256[:12], name, seconds)
        return {"compile_seconds": seconds}

    built_as = f"{version} {json.dumps(kind.options, sort_keys=True)}"  # the cache key holds the options
    folder, entry, built = cached_build(model_sha256, name, built_as, build)
    return kind(folder, version), {**entry, "built": built, "folder": str(folder)}
