"""The command line on the tiny model: each command works, bad input is one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import workbench as wb
from workbench.cli import main


def test_models_lists_builtins(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny-random-llama" in out and "smollm2-135m-instruct" in out and "d_model" in out


def test_compute_then_generate(tmp_path, capsys):
    out = tmp_path / "title.safetensors"
    args = ["directions", "compute", "--model", "tiny-random-llama", "--instruction", "detectable_format:title",
            "--split", "validation", "--layers", "1-3", "--out", str(out)]
    assert main(args) == 0
    d = wb.Direction.load(out)
    assert d.layers == (1, 2, 3) and d.n_pairs == 40 and d.name == "detectable_format:title"
    capsys.readouterr()
    assert main(["generate", "--model", "tiny-random-llama", "--prompt", "Hi", "--prompt", "Tell me a story",
                 "--steer", str(out), "--layer", "2", "--coeff", "4", "--max-new-tokens", "4"]) == 0
    plain = capsys.readouterr().out
    assert plain.count("### ") == 2
    assert main(["generate", "--model", "tiny-random-llama", "--prompt", "Hi", "--prompt", "Tell me a story",
                 "--steer", str(out), "--layer", "2", "--coeff", "4", "--max-new-tokens", "4", "--backend", "compiled"]) == 0
    assert capsys.readouterr().out == plain
    assert main(["generate", "--model", "tiny-random-llama", "--prompt", "Hi", "--steer", str(out), "--steer", str(out),
                 "--layer", "2", "--layer", "3", "--mode", "project", "--max-new-tokens", "3", "--no-cache"]) == 0


def test_compute_from_pairs_file(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    wb.load_pairs("keywords", "keywords:existence", split="validation", kwargs={"keywords": ["ocean"]}).head(5).to_jsonl(pairs)
    out = tmp_path / "kw.safetensors"
    assert main(["directions", "compute", "--model", "tiny-random-llama", "--pairs", str(pairs), "--out", str(out)]) == 0
    assert wb.Direction.load(out).n_pairs == 5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--model", "tiny-random-llama", "--prompt", "Hi", "--steer", "missing.safetensors", "--layer", "1"], "no such file"),
        (["directions", "compute", "--model", "tiny-random-llama", "--instruction", "no:such", "--out", "x.safetensors"], "unknown built-in instruction"),
        (["directions", "compute", "--model", "tiny-random-llama", "--instruction", "detectable_format:title", "--layers", "1-x", "--out", "x.safetensors"], "--layers"),
        (["directions", "compute", "--model", "tiny-random-llama", "--instruction", "detectable_format:title", "--layers", "9", "--out", "x.safetensors"], "out of range"),
        (["directions", "compute", "--model", "tiny-random-llama", "--instruction", "keywords:existence", "--kwargs", "{oops", "--out", "x.safetensors"], "not JSON"),
        (["generate", "--model", "tiny-random-llama", "--prompt", "Hi", "--layer", "1"], "need --steer"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("workbench: error:") and err.count("\n") == 1


def test_steering_vector_from_another_model(tmp_path, capsys):
    import torch

    wide = wb.Direction(vectors=torch.ones(4, 32), layers=(0, 1, 2, 3), name="wide", model_name="other",
                        d_model=32, n_model_layers=4)
    wide.save(tmp_path / "wide.safetensors")
    assert main(["generate", "--model", "tiny-random-llama", "--prompt", "Hi", "--steer", str(tmp_path / "wide.safetensors"), "--layer", "1"]) == 2
    assert "d_model=32" in capsys.readouterr().err


def test_no_traceback_in_a_real_process(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", "generate", "--model", "not-a-model", "--prompt", "Hi"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown model 'not-a-model'" in proc.stderr
