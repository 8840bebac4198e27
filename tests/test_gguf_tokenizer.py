"""GGUF SentencePiece-BPE vocabularies (Gemma) become a BPE tokenizer with merges ranked by score."""

import json

import numpy as np
import pytest

from workbench.models.gguf import rebuild_spm_bpe_tokenizer

# piece, score (higher merges first), llama.cpp token type (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte)
VOCAB = [
    ("<pad>", 0.0, 3), ("<eos>", 0.0, 3), ("<bos>", 0.0, 3), ("<unk>", 0.0, 2), ("<mask>", 0.0, 3),
    ("<start_of_turn>", 0.0, 3), ("\n\n", 0.0, 4), ("<0x0A>", 0.0, 6),
    ("▁", -100.0, 1), ("a", -101.0, 1), ("b", -102.0, 1), ("c", -103.0, 1),
    ("▁ab", -1.0, 1), ("ab", -2.0, 1), ("▁a", -3.0, 1), ("abc", -10.0, 1),
]


def _write_gguf(path):
    import gguf

    w = gguf.GGUFWriter(str(path), arch="gemma3")
    w.add_tokenizer_model("llama")
    w.add_token_list([p for p, _, _ in VOCAB])
    w.add_token_scores([s for _, s, _ in VOCAB])
    w.add_token_types([t for _, _, t in VOCAB])
    w.add_tensor("t0", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_unigram_folder(folder):
    """What transformers 5.9 writes for a Gemma GGUF: a Unigram model over the same pieces."""
    from tokenizers import AddedToken, Tokenizer, normalizers
    from tokenizers.models import Unigram

    tok = Tokenizer(Unigram([(p, s) for p, s, _ in VOCAB], unk_id=3, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.add_special_tokens([AddedToken(p, normalized=False) for p in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>", "mask_token": "<mask>",
    }))


def test_rebuilt_tokenizer_merges_by_score_and_adds_bos(tmp_path):
    from transformers import AutoTokenizer

    _write_gguf(tmp_path / "m.gguf")
    _write_unigram_folder(tmp_path)
    rebuild_spm_bpe_tokenizer(tmp_path / "m.gguf", tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.tokenize("ab ab\n\nabc") == ["ab", "▁ab", "\n\n", "abc"]
    ids = tok("ab ab").input_ids
    assert ids == [2, 13, 12]  # <bos> first, as Gemma was trained
    assert tok("<start_of_turn>a", add_special_tokens=False).input_ids == [5, 9]  # control pieces stay whole
    assert tok.decode(tok("ab abc").input_ids, skip_special_tokens=True) == "ab abc"


def test_rebuild_refuses_a_tokenizer_of_another_vocabulary(tmp_path):
    from workbench.errors import ModelNotFoundError

    _write_gguf(tmp_path / "m.gguf")
    _write_unigram_folder(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["model"]["vocab"] = data["model"]["vocab"][:-1]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ModelNotFoundError, match="pieces"):
        rebuild_spm_bpe_tokenizer(tmp_path / "m.gguf", tmp_path)

