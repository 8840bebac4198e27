"""Model loading, prompt formatting and clear errors for models that cannot be loaded."""

from __future__ import annotations

import pytest

import workbench as wb
from workbench.models.gguf import gguf_architecture
from workbench.models.prompts import PromptFormatter


def test_tiny_model_shape(tiny):
    assert tiny.cfg.n_layers == 4
    assert tiny.cfg.d_model == 64
    assert "blocks.3.hook_resid_post" in tiny.hook_dict
    assert wb.model_info(tiny).name == "tiny-random-llama"
    assert wb.model_info(tiny).prompt_style == "chat"


def test_chat_and_qa_formatting(tiny):
    chat = PromptFormatter(tiny.tokenizer, "chat")
    assert chat.format("Hello") == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert PromptFormatter(tiny.tokenizer, "qa").format("Hello") == "Q: Hello\nA:"
    ids, mask = chat.encode(["a", "a longer prompt"], padding_side="left")
    assert ids.shape == mask.shape and mask[0, 0] == 0 and mask[1].all()
    with pytest.raises(wb.WorkbenchError, match="unknown prompt style"):
        PromptFormatter(tiny.tokenizer, "poetry")


def test_unknown_model_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(wb.ModelNotFoundError, match="not a built-in name.*huggingface-cli download"):
        wb.load_model("no-such-model-xyz")


def test_missing_and_invalid_paths(tmp_path):
    with pytest.raises(wb.ModelNotFoundError, match="no such model folder"):
        wb.load_model(str(tmp_path / "missing"))
    with pytest.raises(wb.ModelNotFoundError, match="no config.json"):
        wb.load_model(str(tmp_path))


def test_local_folder_loads_like_a_checkpoint(tiny):
    model = wb.load_model(wb.model_info(tiny).path)
    assert model.cfg.d_model == 64


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(wb.ModelNotFoundError, match="not a readable GGUF"):
        gguf_architecture(bad)


def test_unknown_dtype():
    with pytest.raises(wb.WorkbenchError, match="unknown dtype"):
        wb.load_model("tiny-random-llama", dtype="float7")


def test_builtin_registry_lists_the_three_models():
    assert {"smollm2-135m-instruct", "gemma-3-270m", "tiny-random-llama"} <= set(wb.BUILTIN_MODELS)
    assert wb.BUILTIN_MODELS["gemma-3-270m"].prompt_style == "qa"
    assert wb.BUILTIN_MODELS["tiny-random-llama"].is_installed()
