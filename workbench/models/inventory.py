"""What ``workbench models`` prints: each built-in model's install state, size and shape."""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import cache
from .loading import CONVERSION_VERSION
from .registry import BUILTIN_MODELS, BuiltinModel


@dataclass(frozen=True)
class ModelRow:
    name: str
    installed: bool
    cached: bool
    size: str
    layers: str
    d_model: str
    prompt_style: str
    install: str


def _human(n_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return ""


def describe_model(spec: BuiltinModel) -> ModelRow:
    installed = spec.is_installed()
    folder = cache.model_cache_dir(spec.name, CONVERSION_VERSION)
    cached = cache.is_complete(folder)
    size = layers = d_model = "-"
    if cached:
        cfg = json.loads((folder / "config.json").read_text())
        layers, d_model = str(cfg.get("num_hidden_layers", "-")), str(cfg.get("hidden_size", "-"))
        size = _human(sum(p.stat().st_size for p in folder.glob("*.safetensors"))) + " (float32)"
    elif installed and spec.source == "gguf-file":
        path = spec.package_dir() / spec.gguf_file
        size = _human(path.stat().st_size) + " (GGUF)"
        layers, d_model = _gguf_shape(path, spec.expected_architecture)
    elif installed and spec.source == "gguf-parts":
        from .chunks import header_fields, part_paths

        try:
            paths = part_paths(spec.parts, spec.part_files, spec.install)
            size = _human(sum(p.stat().st_size for p in paths)) + f" (GGUF, {len(paths)} parts)"
            fields = header_fields(paths[0])
            arch = spec.expected_architecture
            layers = str(fields.get(f"{arch}.block_count", "-"))
            d_model = str(fields.get(f"{arch}.embedding_length", "-"))
        except Exception:  # noqa: BLE001  (a listing never fails on one broken install)
            size = "parts incomplete"
    return ModelRow(spec.name, installed, cached, size, layers, d_model, spec.prompt_style, spec.install)


def _gguf_shape(path, arch: str | None) -> tuple[str, str]:
    """Layer count and width from the GGUF header, without loading any weights."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(path), "r").fields
    except Exception:
        return "-", "-"

    def value(key: str) -> str:
        f = fields.get(f"{arch}.{key}")
        return str(int(f.parts[f.data[0]][0])) if f is not None else "-"

    return value("block_count"), value("embedding_length")


def inventory() -> list[ModelRow]:
    """One row per built-in model."""
    return [describe_model(spec) for spec in BUILTIN_MODELS.values()]
