"""Benchmark options for any hardware (issue 29, part 4): ``--twin``, ``--dtype``, ``--batches``.

The twins' config numbers are checked against the real models' shapes (no weights built: a 7B model does not fit this
machine's tests); a twin with fewer layers is built, cached, loaded and benchmarked; bad options are refused in one
line before any twin is built or model loaded.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from workbench.bench import _batch, markdown, run_bench
from workbench.bench_options import batch_list, check_dtype
from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.models.twins import SHAPES, describe_twin, shape_config, twin_folder

# The real models' shapes as published in their config.json files.
REAL = {
    "smollm2": dict(cls="LlamaConfig", num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                    head_dim=64, intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),
    "llama3-3b": dict(cls="LlamaConfig", num_hidden_layers=28, hidden_size=3072, num_attention_heads=24, num_key_value_heads=8,
                      head_dim=128, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
    "mistral-7b": dict(cls="MistralConfig", num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, intermediate_size=14336, vocab_size=32000, tie_word_embeddings=False),
    "gemma2-2b": dict(cls="Gemma2Config", num_hidden_layers=26, hidden_size=2304, num_attention_heads=8, num_key_value_heads=4,
                      head_dim=256, intermediate_size=9216, vocab_size=256000, tie_word_embeddings=True),
}
# Parameter counts of the real models (tied embeddings counted once), in billions.
PARAMS_B = {"smollm2": 0.1345, "llama3-3b": 3.2128, "mistral-7b": 7.2416, "gemma2-2b": 2.6142}


@pytest.mark.parametrize("name", list(REAL))
def test_twin_config_has_the_real_shape(name):
    config = shape_config(name)
    want = dict(REAL[name])
    assert type(config).__name__ == want.pop("cls")
    assert {k: getattr(config, k) for k in want} == want


@pytest.mark.parametrize("name", list(REAL))
def test_twin_parameter_count_is_the_real_models(name):
    """Built on the meta device (no memory): the numbers above make a model of the real size."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape_config(name))
    n = sum(p.numel() for p in model.parameters()) / 1e9  # parameters() yields a tied weight once
    assert math.isclose(n, PARAMS_B[name], rel_tol=2e-3), n


def test_family_traits_kept_at_real_shape():
    gemma, llama = shape_config("gemma2-2b"), shape_config("llama3-3b")
    assert (gemma.attn_logit_softcapping, gemma.final_logit_softcapping, gemma.query_pre_attn_scalar) == (50.0, 30.0, 256)
    assert gemma.sliding_window == 4096 and "sliding_attention" in gemma.layer_types
    assert llama.rope_parameters["rope_type"] == "llama3" and llama.rope_parameters["factor"] == 32.0
    assert shape_config("smollm2").rope_parameters["rope_theta"] == 100000.0
    reduced = shape_config("gemma2-2b", layers=3)
    assert reduced.num_hidden_layers == 3 and len(reduced.layer_types) == 3 and reduced.hidden_size == 2304


def test_reduced_twin_is_built_once_and_loads(tmp_path, monkeypatch):
    import workbench as wb

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    said: list[str] = []
    folder = twin_folder("smollm2", layers=2, dtype="bfloat16", say=said.append)
    assert len(said) == 1 and (folder / "COMPLETE").is_file()
    cfg = json.loads((folder / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"], cfg["dtype"]) == (2, 576, 49152, "bfloat16")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert twin_folder("smollm2", layers=2, dtype="bfloat16", say=said.append) == folder
    assert len(said) == 1 and (folder / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rebuilt
    model = wb.load_model(str(folder), device="cpu", dtype="bfloat16")
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab, model.cfg.dtype) == (2, 576, 49152, torch.bfloat16)
    tokens = wb.generate(model, ["Hello."], max_new_tokens=3, min_new_tokens=3, return_tokens=True)
    assert len(tokens[0]) == 3  # forced to full length, whatever the random weights pick


def test_bench_on_a_twin_says_random_and_forced(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    report = run_bench(twin="smollm2", twin_layers=2, dtype="bfloat16", device="cpu", batches=(2, 3), lengths=(3,),
                       n_extract=2, repeats=1, peers=False, compiled=False, out=out, say=lambda s: None)
    saved = json.loads(out.read_text())
    assert saved["weights"] == "random" and saved["dtype"] == "bfloat16" and saved["model"] == "twin:smollm2"
    assert "min_new_tokens = max_new_tokens" in saved["generation"]
    assert saved["twin"]["config"]["num_hidden_layers"] == 2 and saved["twin"]["real_layers"] == 30
    gen = [r for r in saved["rows"] if r["task"] == "generate" and not r["variant"].startswith("reference")]
    assert {r["batch"] for r in gen} == {2, 3} and not any("compiled" in r["variant"] for r in gen)
    assert saved["weight_bytes"] == 2 * sum(p.numel() for p in _meta_twin("smollm2", 2).parameters())  # bf16: 2 bytes each
    assert saved["ratios"] and all(isinstance(v, float) for v in saved["ratios"].values())  # no NaN (null) ratios
    assert not any(k.startswith("steered b1 ") or "/ steered b1" in k for k in saved["ratios"])  # batch 1 not measured
    text = markdown(saved)
    assert "**Random weights**" in text and "2 of its 30 layers" in text and "dtype bfloat16" in text
    assert "min_new_tokens = max_new_tokens" in text and "not run (--no-compiled)" in text


def _meta_twin(name: str, layers: int):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(shape_config(name, layers))


def test_markdown_of_an_old_report_still_renders():
    """docs/bench.json predates these options: no dtype, weights or twin keys."""
    from pathlib import Path

    old = json.loads((Path(__file__).resolve().parents[1] / "docs" / "bench.json").read_text())
    text = markdown(old)
    assert "dtype float32" in text and "Random weights" not in text


def test_large_batches_cycle_the_prompts():
    prompts = [f"p{i}" for i in range(40)]
    assert _batch(prompts, 64) == prompts + prompts[:24] and _batch(prompts, 3) == prompts[:3]


def test_batch_list():
    assert batch_list("1,16,64") == [1, 16, 64] and batch_list(" 4 ") == [4]
    for bad in ("", " ", "1,,2", "1,x", "0", "-1", "1.5", "2,2", "99999"):
        with pytest.raises(Exception):
            batch_list(bad)


def test_dtype_the_device_cannot_run_is_refused(monkeypatch):
    assert check_dtype(None, "cpu") == "float32" and check_dtype("bfloat16", "cpu") == "bfloat16"
    real = torch.nn.functional.scaled_dot_product_attention

    def no_half(q, *args, **kwargs):
        if q.dtype == torch.float16:
            raise RuntimeError('"baddbmm_cpu" not implemented for \'Half\'\nmore detail')
        return real(q, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", no_half)
    with pytest.raises(WorkbenchError, match=r"--dtype float16: device cpu cannot run it \(\"baddbmm_cpu\" not implemented"):
        check_dtype("float16", "cpu")
    assert check_dtype("float32", "cpu") == "float32"


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if any model is loaded or any twin built (refusals must come first)."""
    import workbench.models.loading as loading
    import workbench.models.twins as twins

    def built(*args, **kwargs):
        raise AssertionError("a model was loaded or a twin built before the bad input was refused")

    for name, module in list(sys.modules.items()):
        if name.startswith("workbench"):
            for attr, original in (("load_model", loading.load_model), ("twin_folder", twins.twin_folder),
                                   ("build_shape_twin", twins.build_shape_twin)):
                if getattr(module, attr, None) is original:
                    monkeypatch.setattr(module, attr, built)


CPU = ["--device", "cpu"]
CASES = [
    ("bench-twin-unknown", ["bench", "--twin", "llama-70b", *CPU, "--out", ""], "invalid choice: 'llama-70b'"),
    ("bench-dtype-unknown", ["bench", "--dtype", "float8", *CPU, "--out", ""], "invalid choice: 'float8'"),
    ("bench-batches-empty", ["bench", "--batches", "", *CPU, "--out", ""], "expected batch sizes"),
    ("bench-batches-word", ["bench", "--batches", "1,many", *CPU, "--out", ""], "'many' is not an integer"),
    ("bench-batches-zero", ["bench", "--batches", "0,16", *CPU, "--out", ""], "must be 1..4096, got 0"),
    ("bench-batches-repeated", ["bench", "--batches", "16,16", *CPU, "--out", ""], "given twice"),
    ("bench-twin-and-model", ["bench", "--twin", "smollm2", "--model", "tiny-random-llama", *CPU, "--out", ""],
     "--twin builds the model"),
    ("bench-twin-layers-alone", ["bench", "--twin-layers", "2", *CPU, "--out", ""], "pass --twin NAME too"),
    ("bench-twin-layers-too-many", ["bench", "--twin", "mistral-7b", "--twin-layers", "33", *CPU, "--out", ""],
     "layers must be 1..32"),
    ("bench-twin-layers-zero", ["bench", "--twin", "smollm2", "--twin-layers", "0", *CPU, "--out", ""], "must be >= 1"),
    ("bench-sweep-twin-unknown", ["bench-sweep", "--twin", "gpt2", *CPU, "--out", ""], "invalid choice: 'gpt2'"),
    ("bench-sweep-layers-past-twin", ["bench-sweep", "--twin", "smollm2", "--twin-layers", "2", "--layers", "2", *CPU,
                                      "--out", ""], "this model has layers 0..1"),
    ("gpu-check-steps-unknown", ["gpu-check", "--steps", "versions,bogus", *CPU, "--quick", "--out", "{tmp}/gc"],
     "unknown step 'bogus'"),
    ("gpu-check-twin-unknown", ["gpu-check", "--twin", "nope", *CPU, "--quick", "--out", "{tmp}/gc"], "invalid choice"),
    ("gpu-check-out-is-file", ["gpu-check", *CPU, "--quick", "--out", "{tmp}/file"], "is a file"),
]


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_bench_options_are_one_line(tmp_path, capsys, nothing_built, argv, fragment):
    (tmp_path / "file").write_text("x")
    argv = [a.format(tmp=tmp_path) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = int(exc.code)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:") and not line.startswith("  ")]
    assert rc == 2, err
    assert len(lines) == 1 and "error:" in lines[0] and fragment in lines[0], err
    assert not (tmp_path / "gc").exists()


def test_unrunnable_dtype_refused_before_load(capsys, nothing_built, monkeypatch):
    def refuse(dtype, device):
        raise WorkbenchError(f"--dtype {dtype}: device {device} cannot run it (test); use --dtype float32")

    monkeypatch.setattr("workbench.bench_options.check_dtype", refuse)
    assert main(["bench", "--dtype", "float16", "--twin", "smollm2", *CPU, "--out", ""]) == 2
    assert "workbench: error: --dtype float16: device cpu cannot run it" in capsys.readouterr().err


def test_describe_twin_is_what_reports_say():
    d = describe_twin("llama3-3b")
    assert d["weights"].startswith("random") and d["config"]["num_hidden_layers"] == 28 and d["real_layers"] == 28
    assert set(SHAPES) >= {"smollm2", "llama3-3b", "mistral-7b", "gemma2-2b"}


def test_a_twin_report_does_not_overwrite_the_real_models():
    from pathlib import Path

    from workbench.cli import _bench_out, build_parser

    parse = build_parser().parse_args
    assert _bench_out(parse(["bench"]), "bench") == Path("docs/bench.json")
    assert _bench_out(parse(["bench", "--twin", "smollm2"]), "bench") == Path("docs/bench-twin-smollm2.json")
    assert _bench_out(parse(["bench", "--twin", "smollm2", "--out", ""]), "bench") is None
    assert _bench_out(parse(["bench-sweep", "--twin", "gemma2-2b"]), "bench-sweep") == Path("docs/bench-sweep-twin-gemma2-2b.json")
    assert _bench_out(parse(["bench-sweep", "--twin", "gemma2-2b", "--out", "x.json"]), "bench-sweep") == Path("x.json")
