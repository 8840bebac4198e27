"""Turn a GGUF file into a cached Hugging Face folder of dequantised safetensors weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModelNotFoundError


def gguf_architecture(path: Path) -> tuple[str, str]:
    """Read ``general.architecture`` and ``general.name`` from a GGUF header (fails clearly if corrupt)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path), "r")
    except Exception as exc:  # gguf raises ValueError/struct errors on corrupt files
        raise ModelNotFoundError(f"{path}: not a readable GGUF file ({exc})") from None

    def field(key: str) -> str:
        f = reader.fields.get(key)
        if f is None:
            return ""
        return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")

    return field("general.architecture"), field("general.name")


def convert_gguf(gguf_path: Path, out_dir: Path, expected_architecture: str | None = None) -> None:
    """Dequantise ``gguf_path`` with transformers and write config, safetensors weights and tokenizer."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch, name = gguf_architecture(gguf_path)
    if expected_architecture and arch != expected_architecture:
        raise ModelNotFoundError(
            f"{gguf_path}: GGUF architecture is {arch!r} ({name!r}), expected {expected_architecture!r}"
        )
    folder, filename = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights we write are plain float32
    config["dtype"] = "float32"
    # GGUF-derived configs carry no `architectures`; TransformerLens picks its adapter from it.
    config["architectures"] = [type(model).__name__]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    save_model(model, str(out_dir / "model.safetensors"))  # handles tied embeddings
    tokenizer.save_pretrained(out_dir)
    (out_dir / "source.json").write_text(json.dumps({"gguf": filename, "architecture": arch, "name": name}))
