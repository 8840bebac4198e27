"""Turn a GGUF file into a cached Hugging Face folder of dequantised safetensors weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelNotFoundError


Vocab = tuple[list[str], list[float], list[int]]  # tokens, scores, llama.cpp token types


@dataclass(frozen=True)
class GGUFHeader:
    """What conversion takes from a GGUF header, parsed once: architecture, name and (when asked) the vocabulary."""

    architecture: str
    name: str
    vocab: Vocab | None = None


def read_gguf_header(path: Path, vocab: bool | None = None) -> GGUFHeader:
    """Parse a GGUF header once; ``vocab``: also read its token arrays (default: when the tokenizer gets rebuilt).

    A corrupt file is a ``ModelNotFoundError``. Example: ``read_gguf_header(p).architecture == "gemma3"``.
    """
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

    arch = field("general.architecture")
    if vocab is None:
        vocab = arch in SPM_BPE_ARCHITECTURES
    return GGUFHeader(arch, field("general.name"), _gguf_tokens(reader, path) if vocab else None)


def gguf_architecture(path: Path) -> tuple[str, str]:
    """Read ``general.architecture`` and ``general.name`` from a GGUF header (fails clearly if corrupt)."""
    header = read_gguf_header(path, vocab=False)
    return header.architecture, header.name


def convert_gguf(gguf_path: Path, out_dir: Path, expected_architecture: str | None = None) -> None:
    """Dequantise ``gguf_path`` with transformers and write config, safetensors weights and tokenizer."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    header = read_gguf_header(gguf_path)  # once: architecture, name and the vocabulary a rebuild needs
    arch, name = header.architecture, header.name
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
    if arch in SPM_BPE_ARCHITECTURES:
        rebuild_spm_bpe_tokenizer(gguf_path, out_dir, header.vocab)
    (out_dir / "source.json").write_text(json.dumps({"gguf": filename, "architecture": arch, "name": name}))


# GGUF files of these architectures carry a SentencePiece *BPE* vocabulary: scores are merge
# priorities, not unigram log-probabilities. transformers 5.9 writes them as a Unigram model, and
# its GemmaTokenizer then rebuilds a BPE with no merges, which splits every word into characters
# (measured on Gemma-3-270M: perplexity 4305 on an English paragraph). llama.cpp tokenises such
# vocabularies by merging the adjacent pair whose merged piece scores highest; the same merges,
# ranked by score, give a Hugging Face BPE model that tokenises the way the model was trained.
SPM_BPE_ARCHITECTURES = ("gemma", "gemma2", "gemma3")
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4  # llama.cpp token types


def _gguf_tokens(reader: Any, gguf_path: Path) -> Vocab:
    """Tokens, scores and token types stored in the header an open ``GGUFReader`` parsed."""

    def array(key: str) -> list:
        f = reader.fields.get(key)
        if f is None:
            raise ModelNotFoundError(f"{gguf_path}: the GGUF header has no {key} (needed to rebuild its tokenizer)")
        return [f.parts[i] for i in f.data]

    tokens = [bytes(t).decode("utf-8", errors="replace") for t in array("tokenizer.ggml.tokens")]
    scores = [float(s[0]) for s in array("tokenizer.ggml.scores")]
    types = [int(t[0]) for t in array("tokenizer.ggml.token_type")]
    return tokens, scores, types


def rebuild_spm_bpe_tokenizer(gguf_path: Path, out_dir: Path, vocab: Vocab | None = None) -> None:
    """Rewrite ``out_dir/tokenizer.json`` as a byte-fallback BPE whose merges follow the GGUF scores.

    ``vocab``: the header's tokens, scores and types when already read (:func:`read_gguf_header`), else read here.
    """
    from transformers.convert_slow_tokenizer import generate_merges

    tokens, scores, types = vocab if vocab is not None else read_gguf_header(gguf_path, vocab=True).vocab
    tok_path = out_dir / "tokenizer.json"
    data = json.loads(tok_path.read_text())
    if len(tokens) != len(data["model"]["vocab"]):
        raise ModelNotFoundError(f"{gguf_path}: tokenizer has {len(data['model']['vocab'])} pieces, GGUF {len(tokens)}")
    pieces = [piece for piece, _ in data["model"]["vocab"]]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    normal = {piece: i for piece, i in vocab.items() if types[i] == _NORMAL}
    merges = generate_merges(normal, [(p, scores[i]) for p, i in normal.items()])
    bos = next(t for t in data["added_tokens"] if t["content"] == "<bos>")
    data["model"] = {
        "type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
        "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
        "vocab": vocab, "merges": [list(m) for m in merges],
    }
    data["pre_tokenizer"] = None  # the normaliser has already turned spaces into "▁"
    # Control (<start_of_turn>) and user-defined ("\n\n", "<b>") pieces match whole, as in SentencePiece.
    known = {t["content"] for t in data["added_tokens"]}
    for i, kind in enumerate(types):
        if kind in (_CONTROL, _USER_DEFINED) and pieces[i] not in known:
            data["added_tokens"].append({"id": i, "content": pieces[i], "single_word": False, "lstrip": False,
                                         "rstrip": False, "normalized": "▁" in pieces[i], "special": kind == _CONTROL})
    # Gemma is trained with <bos> first; without it the model is near-random.
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<bos>": {"id": "<bos>", "ids": [bos["id"]], "tokens": ["<bos>"]}},
    }
    tok_path.write_text(json.dumps(data, ensure_ascii=False))
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(add_bos_token=True, add_eos_token=False)
    config_path.write_text(json.dumps(config, indent=2))
