"""``load_model``: a built-in name, a local folder or a Hugging Face id -> a TransformerBridge."""

from __future__ import annotations

import os
import pickle
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
    conditional: list = field(default_factory=list)  # ConditionalSteering of open steer(condition=...) blocks
    gates_open: bool = False  # generate() is deciding and applying the conditional blocks (their guard lets it run)
    generation_state: Any = None
    plain: Any = None  # lazily built plain transformers model sharing the weights
    static_decoder: Any = None  # lazily built StaticModel the eager and compiled engines run (workbench.decoding.static)

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
    """Return ``(display name, local path, prompt style or None to infer)``; offline-first.

    A built-in name, then a local folder, then the local Hugging Face cache; only a name found
    in none of them goes to the hub, with one quick request (no retries), so an unknown name
    or a typo fails in a second, also with networking blocked.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ModelNotFoundError(f"a model name or folder must be a non-empty string, got {name_or_path!r}")
    name_or_path = str(name_or_path)
    if name_or_path in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name_or_path]
        if not spec.is_installed():
            raise ModelNotFoundError(spec.not_installed_message())
        return spec.name, str(prepare_builtin(spec)), spec.prompt_style
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: not a model folder (no config.json)")
        return path.name, str(path), None
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelNotFoundError(f"{name_or_path}: no such model folder{_did_you_mean(name_or_path)}")
    return name_or_path, _hub_snapshot(name_or_path), None


def layer_count(name_or_path: str) -> int | None:
    """The model's layer count read from its ``config.json`` without loading it (None where the config does not say).

    Lets ``--layers`` be checked against the model before the slow load; an unknown name fails here as in
    :func:`load_model`.
    """
    import json

    _, path, _ = _resolve(name_or_path)
    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for source in (cfg, cfg.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _did_you_mean(name: str) -> str:
    """`` (did you mean 'tiny-random-llama'?)`` for a near-miss of a built-in name, else ''."""
    import difflib

    close = difflib.get_close_matches(name.lower(), list(BUILTIN_MODELS), n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One request to the hub endpoint, no retries: False when offline, blocked or unresolvable."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session

        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001  (any network failure means: not reachable)
        return False


def _hub_snapshot(hub_id: str) -> str:
    """The local folder of a hub model: from the Hugging Face cache, else downloaded when the hub answers."""
    from huggingface_hub import snapshot_download

    builtins = ", ".join(BUILTIN_MODELS)
    hint = (
        f"unknown model {hub_id!r}{_did_you_mean(hub_id)}: not a built-in name ({builtins}), not a local folder, "
        "and not in the local Hugging Face cache"
    )
    try:
        return snapshot_download(hub_id, local_files_only=True)
    except Exception:  # noqa: BLE001  (not cached, or an id the hub library rejects)
        pass
    if _did_you_mean(hub_id) and "/" not in hub_id:
        raise ModelNotFoundError(hint)  # a typo of a built-in name: no hub request at all
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached"
        raise ModelNotFoundError(
            f"{hint}, and {why}. On a machine with hub access run `huggingface-cli download {hub_id}` "
            "(or pass a local checkpoint folder)"
        )
    try:
        return snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as exc:  # noqa: BLE001  (unknown repo, gated, network error mid-way)
        raise ModelNotFoundError(f"{hint}; the hub answered: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None


def check_device(device: str | torch.device | None) -> str:
    """A device string torch accepts and this machine has (``cuda`` needs a CUDA build and a GPU).

    >>> check_device("cpu")
    'cpu'
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise WorkbenchError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise WorkbenchError(f"device {str(device)!r}: {build}; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise WorkbenchError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise WorkbenchError(f"device {str(device)!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise WorkbenchError(f"device {str(device)!r}: the workbench runs on cpu, cuda or mps")
    return str(dev)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
):
    """Load a model as a ``TransformerBridge`` with HookedTransformer hook names.

    The residual stream is left unprocessed (no LayerNorm folding or centering), so directions
    live in the same coordinates as the plain ``transformers`` model and llama.cpp.
    """
    device = check_device(device)
    if isinstance(dtype, str):
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype) or not value.is_floating_point:
            raise WorkbenchError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        dtype = value
    dtype = dtype or torch.float32
    display, path, style = _resolve(name_or_path)  # before the slow TransformerLens import: bad names fail fast
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar on every load is noise
    try:
        bridge = TransformerBridge.boot_transformers(path, device=device, dtype=dtype)
    except pickle.UnpicklingError:
        raise ModelNotFoundError(
            f"cannot load {name_or_path!r}: its weights are a pickle (pytorch_model.bin), which can run code "
            "when loaded, so they are refused; save the checkpoint as safetensors "
            "(model.save_pretrained(folder, safe_serialization=True) where you trust it)"
        ) from None
    except (OSError, KeyError) as exc:
        raise ModelNotFoundError(f"cannot load {name_or_path!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
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
