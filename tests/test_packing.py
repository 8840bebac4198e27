"""Per-row steering: rows of several settings in one decode batch give each setting's own greedy tokens."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.steering import SteeringSpec
from workbench.steering.rows import RowSteering

PROMPTS = ["Hi.", "Explain why the sky is blue.", "Write a story about a fox who finds a lantern at night."]
N = 10


def _settings(tiny) -> list[list[SteeringSpec]]:
    """Unsteered, and one or two specs of every mode, position setting, hook and layer."""
    acts = wb.collect_activations(tiny, PROMPTS, layers=[1], progress=False)[:, 0]
    vec = acts.mean(0)
    u = vec / vec.norm()
    g = torch.Generator().manual_seed(3)
    r = torch.randn(vec.shape[0], generator=g)
    r = r / r.norm()
    target = -float(vec.norm())
    return [
        [],
        [SteeringSpec(unit=u, layer=1, coeff=6.0)],
        [SteeringSpec(unit=u, layer=1, mode="project", target=target)],
        [SteeringSpec(unit=u, layer=2, mode="ablate", positions="generated")],
        [SteeringSpec(unit=r, layer=3, coeff=-5.0, positions="prompt")],
        [SteeringSpec(unit=r, layer=2, coeff=5.0), SteeringSpec(unit=u, layer=2, mode="ablate")],
        [SteeringSpec(unit=r, layer=1, coeff=5.0), SteeringSpec(unit=-r, layer=3, coeff=4.0, hook="resid_pre")],
    ]


def _alone(model, specs, **kw):
    if not specs:
        return wb.generate(model, PROMPTS, max_new_tokens=N, batch_size=len(PROMPTS), return_tokens=True, **kw)
    with wb.steer(model, *specs):
        return wb.generate(model, PROMPTS, max_new_tokens=N, batch_size=len(PROMPTS), return_tokens=True, **kw)


def _packed(model, settings, batch_size, **kw):
    prompts = [p for _ in settings for p in PROMPTS]
    rows = [s for s in settings for _ in PROMPTS]
    out = wb.generate(model, prompts, max_new_tokens=N, batch_size=batch_size, return_tokens=True, row_steering=rows, **kw)
    return [out[i * len(PROMPTS):(i + 1) * len(PROMPTS)] for i in range(len(settings))]


@pytest.mark.parametrize("backend,use_cache", [("plain", True), ("bridge", True), ("auto", False)])
def test_packed_rows_equal_each_setting_alone(tiny, backend, use_cache):
    """Every setting's rows in one batch (or split over batches) give the tokens of that setting decoded alone."""
    settings = _settings(tiny)
    alone = [_alone(tiny, s, backend=backend, use_cache=use_cache) for s in settings]
    assert len({str(a) for a in alone}) >= 5, "the settings should steer differently"
    for batch_size in (len(settings) * len(PROMPTS), 5):
        assert _packed(tiny, settings, batch_size, backend=backend, use_cache=use_cache) == alone


def test_packed_rows_on_the_compiled_step(tiny):
    settings = _settings(tiny)
    alone = [_alone(tiny, s, backend="plain") for s in settings]
    assert _packed(tiny, settings, len(settings) * len(PROMPTS), backend="compiled") == alone


def test_row_steering_adds_to_an_open_steer_block(tiny):
    settings = _settings(tiny)
    outer = settings[1]
    with wb.steer(tiny, *outer):
        packed = _packed(tiny, [[], settings[4]], 6, backend="plain")
    assert packed[0] == _alone(tiny, outer, backend="plain")
    assert packed[1] == _alone(tiny, outer + settings[4], backend="plain")


def test_row_steering_bad_input(tiny):
    u = torch.ones(tiny.cfg.d_model) / tiny.cfg.d_model**0.5
    spec = SteeringSpec(unit=u, layer=1, coeff=1.0)
    with pytest.raises(wb.WorkbenchError, match="one list of specs per prompt"):
        wb.generate(tiny, PROMPTS, row_steering=[[spec]])
    with pytest.raises(wb.WorkbenchError, match=r"row_steering\[1\].*d_model=7"):
        wb.generate(tiny, PROMPTS[:2], row_steering=[[spec], [SteeringSpec(unit=torch.ones(7) / 7**0.5, layer=1)]])
    with pytest.raises(wb.WorkbenchError, match=r"row_steering\[0\].*layer 9 is out of range"):
        wb.generate(tiny, PROMPTS[:1], row_steering=[[SteeringSpec(unit=u, layer=9)]])
    with pytest.raises(wb.WorkbenchError, match="list of SteeringSpec"):
        wb.generate(tiny, PROMPTS[:1], row_steering=[spec])
    with pytest.raises(wb.WorkbenchError, match="applied to a batch of 3"):
        RowSteering.build([[spec]], 4, tiny.cfg.d_model).apply("resid_post", 1, torch.zeros(3, 2, tiny.cfg.d_model), None)


def test_ended_rows_leave_the_batch(tiny, monkeypatch):
    """Greedy per-row batches drop rows as they end; the tokens equal decoding every row to the end, and the bridge's."""
    import workbench.decoding.driver as generation  # where a call reads its end tokens
    import workbench.decoding.engine as static_decoding  # where the token loop reads COMPACT_SHARE

    settings = _settings(tiny)
    full = _packed(tiny, settings, 21, backend="plain")
    rows = [row for setting in full for row in setting]
    real_eos = generation.eos_token_ids(tiny)

    def ends(token: int) -> set[int]:  # each row's length with ``token`` as one more end token
        return {next((i + 1 for i, t in enumerate(row) if t == token or t in real_eos), len(row)) for row in rows}

    # an end token that some rows pick early and others late (or never), so rows end at different steps
    token = max(sorted({t for row in rows for t in row}), key=lambda t: len(ends(t)))
    monkeypatch.setattr(generation, "eos_token_ids", lambda model: sorted(set(real_eos) | {token}))
    monkeypatch.setattr(static_decoding, "COMPACT_SHARE", 2.0)  # never drop a row
    kept = _packed(tiny, settings, 21, backend="plain")
    lengths = {len(row) for setting in kept for row in setting}
    assert len(lengths) >= 3 and max(lengths) == N, lengths
    monkeypatch.setattr(static_decoding, "COMPACT_SHARE", 0.0)  # drop every ended row at once
    assert _packed(tiny, settings, 21, backend="plain") == kept
    assert _packed(tiny, settings, 21, backend="bridge") == kept


def test_sampled_rows_equal_sampling_under_steer(tiny):
    """Sampling with per-row steering (plain model hooks, one setting per batch) draws what ``steer`` draws."""
    settings = _settings(tiny)
    kw = dict(do_sample=True, temperature=1.0, seed=5)
    for specs in (settings[1], settings[4]):
        packed = _packed(tiny, [specs], len(PROMPTS), backend="plain", **kw)[0]
        assert packed == _alone(tiny, specs, backend="plain", **kw)
