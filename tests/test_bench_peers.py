"""Peer libraries in ``workbench bench``: steering-vectors and repeng steer the same thing as the workbench's add mode.

Equality tests need the peers (``make setup`` installs them with --no-deps) and skip cleanly without them.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.bench import Row, markdown, ratios
from workbench.bench_peers import (
    GENERATORS,
    PEERS,
    generate_repeng,
    generate_steering_vectors,
    peer_status,
    peer_variants,
    row_name,
)
from workbench.models.plain import decoder_layers

LAYER, COEFF, N = 2, 8.0, 12
PROMPTS = ["Hi.", "Explain why the sky is blue, in two sentences."]  # different lengths: left padding is exercised


def _require(name: str) -> None:
    status = peer_status(name)
    if not status.available:
        pytest.skip(f"{name} not usable here: {status.error}")


@pytest.fixture(scope="module")
def hf(tiny):
    """A separate plain transformers copy of the tiny model, loaded from its folder as the bench loads its own."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(wb.model_info(tiny).path, dtype=tiny.cfg.dtype).eval()


@pytest.fixture(scope="module")
def spec(tiny):
    g = torch.Generator().manual_seed(3)
    u = torch.randn(tiny.cfg.d_model, generator=g)
    return wb.SteeringSpec(unit=u / u.norm(), layer=LAYER, coeff=COEFF)


@pytest.fixture(scope="module")
def workbench_tokens(tiny, spec):
    with wb.steer(tiny, spec):
        steered = wb.generate(tiny, PROMPTS, max_new_tokens=N, min_new_tokens=N, return_tokens=True)
    unsteered = wb.generate(tiny, PROMPTS, max_new_tokens=N, min_new_tokens=N, return_tokens=True)
    assert all(len(r) == N for r in steered + unsteered)
    return steered, unsteered


@pytest.mark.parametrize("name", PEERS)
def test_peer_tokens_equal_workbench_steering(name, tiny, hf, spec, workbench_tokens):
    _require(name)
    steered, unsteered = workbench_tokens
    got = GENERATORS[name](tiny, hf, spec, PROMPTS, N).tolist()
    assert got == steered
    for row_steered, row_plain in zip(got, unsteered):
        assert row_steered != row_plain  # the coefficient changes every row: equality is not vacuous


@pytest.mark.parametrize("name", PEERS)
def test_peer_leaves_the_model_unsteered(name, tiny, hf, spec, workbench_tokens):
    """After a peer's call the model has no hook or wrapper left: plain generation gives the unsteered tokens."""
    _require(name)
    names_before = [n for n, _ in hf.named_modules()]
    GENERATORS[name](tiny, hf, spec, PROMPTS[:1], 2)
    assert [n for n, _ in hf.named_modules()] == names_before  # repeng's ControlModule unwrapped again
    assert all(not m._forward_hooks for m in decoder_layers(hf))
    ids, mask = wb.model_info(tiny).formatter.encode(PROMPTS, padding_side="left")
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, min_new_tokens=N, do_sample=False,
                          pad_token_id=tiny.tokenizer.pad_token_id)
    assert out[:, ids.shape[1]:].tolist() == workbench_tokens[1]


def test_peer_variants_check_and_rows(tiny, hf, spec):
    for name in PEERS:
        _require(name)
    variants, report = peer_variants(tiny, hf, spec, PROMPTS, check_tokens=6)
    assert set(variants) == {row_name(p) for p in PEERS}
    assert all(report[p]["tokens_equal_workbench"] is True and report[p]["note"] is None for p in PEERS)
    assert variants[row_name("repeng")](PROMPTS, 3).shape == (2, 3)


def test_absent_peer_gets_a_note_and_no_row(tiny, hf, spec, monkeypatch):
    monkeypatch.setitem(sys.modules, "repeng", None)  # `import repeng` now raises ModuleNotFoundError
    status = peer_status("repeng")
    assert not status.available and status.error.startswith("ModuleNotFoundError: ") and "repeng" in status.error
    variants, report = peer_variants(tiny, hf, spec, PROMPTS[:1], check_tokens=2, names=("repeng",))
    assert variants == {}
    assert "repeng not measured: import failed (ModuleNotFoundError" in report["repeng"]["note"]
    text = markdown({"model": "m", "device": "cpu", "machine": "x", "torch": "t", "weight_bytes": 2**20,
                     "bandwidth_gbs": 1.0, "batch1_ceiling_tokens_per_s": 1.0, "rows": [], "ratios": {},
                     "peers": report, "peer_check": {"prompts": 1, "tokens": 2}})
    assert "repeng not measured: import failed" in text


def test_repeng_import_leaves_numpy_as_it_was():
    _require("repeng")
    assert "float_" not in vars(np) or np.__version__.startswith("1.")


@pytest.mark.parametrize("fn", [generate_steering_vectors, generate_repeng])
def test_bad_requests_refused_before_work(fn, tiny, hf, spec):
    with pytest.raises(wb.LayerError, match="out of range"):
        fn(tiny, hf, wb.SteeringSpec(unit=spec.unit, layer=4, coeff=1.0), PROMPTS, 2)
    with pytest.raises(wb.ShapeError, match="d_model is 64"):
        fn(tiny, hf, wb.SteeringSpec(unit=torch.ones(65) / 65**0.5, layer=1), PROMPTS, 2)
    with pytest.raises(wb.SteeringError, match="need add, all, resid_post"):
        fn(tiny, hf, wb.SteeringSpec(unit=spec.unit, layer=1, mode="ablate"), PROMPTS, 2)
    with pytest.raises(wb.WorkbenchError, match="non-empty list of prompts"):
        fn(tiny, hf, spec, [], 2)
    with pytest.raises(wb.WorkbenchError, match="new tokens must be >= 1"):
        fn(tiny, hf, spec, PROMPTS, 0)


def test_peer_ratios_are_the_quotients_of_their_rows():
    def row(variant, b, n, tps):
        return Row("generate", variant, b, n, 1.0, tps, "tokens/s", 0.0)

    rows = [row("workbench, steered (add, 1 layer)", 1, 8, 30.0), row("workbench, steered (add, 1 layer)", 16, 8, 160.0),
            row("workbench compiled step, steered (add, 1 layer)", 16, 8, 200.0),
            row(row_name("repeng"), 1, 8, 20.0), row(row_name("repeng"), 16, 8, 100.0)]
    out = ratios(rows)
    assert out["steered b1 / repeng b1, 8 tokens"] == pytest.approx(1.5)
    assert out["steered b16 / repeng b16, 8 tokens (target > 1)"] == pytest.approx(1.6)
    assert out["compiled steered b16 / repeng b16, 8 tokens"] == pytest.approx(2.0)
    assert not any("steering-vectors" in k for k in out)  # no rows, no ratios
