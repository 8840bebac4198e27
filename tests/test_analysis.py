"""Where the instruction lives: attribution sums, span alignment, attention, patching, necessity, reliability."""

from __future__ import annotations

import json

import pytest
import torch

import workbench as wb
from workbench.analysis import (
    activation_patching, attention_figure, attribution_figure, direct_attribution, instruction_attention,
    instruction_span, make_metric, necessity_figure, necessity_sufficiency, patch_effects, patching_figure,
    reliability_figure, reliability_from_activations,
)
from workbench.analysis.common import tokenize_pairs
from workbench.analysis.patching import clean_runs
from workbench.directions import direction_from_activations
from workbench.errors import DatasetError, LayerError, ShapeError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a busy shared 2-core CPU it is several times faster than two competing ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pairs(rows: list[tuple[str, str]], iid: str = "detectable_format:title") -> wb.PairDataset:
    return wb.PairDataset([
        wb.PairRow(prompt=w, prompt_without_instruction=wo, instruction_id=iid, kwargs={}, base_id=f"q{i}",
                   eval_instruction_ids=(iid,), eval_kwargs=({},), split="train")
        for i, (w, wo) in enumerate(rows)
    ])


@pytest.fixture
def tiny_direction(tiny, tiny_pairs):
    return wb.compute_direction(tiny, tiny_pairs.filter(instruction="detectable_format:title"), progress=False)


@pytest.fixture
def title_pairs(tiny_pairs):
    return tiny_pairs.filter(instruction="detectable_format:title")


# --- direct attribution ------------------------------------------------------------------
@pytest.mark.parametrize("layer", [0, 2, 3])
def test_attribution_sums_to_resid_post_projection(tiny, title_pairs, tiny_direction, layer):
    att = direct_attribution(tiny, title_pairs, tiny_direction, layer, batch_size=2, progress=False)
    u = tiny_direction.at(layer).unit
    # the measured projection, read independently through collect_activations (plain model, other batching)
    for side, prompts in ((0, title_pairs.prompts()), (1, title_pairs.prompts_without_instruction())):
        ref = wb.collect_activations(tiny, prompts, layers=[layer], progress=False)[:, 0] @ u
        torch.testing.assert_close(att.total[side], ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(att.component_sum[side], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert att.heads.shape == (2, len(title_pairs), layer + 1, tiny.cfg.n_heads)
    assert att.max_relative_error < 1e-4


def test_attribution_heads_sum_to_attention_output(tiny, title_pairs, tiny_direction):
    att = direct_attribution(tiny, title_pairs, tiny_direction, 3, progress=False)
    ids, _ = tiny.workbench.formatter.encode([title_pairs[1].prompt])
    _, cache = tiny.run_with_cache(ids)
    u = tiny_direction.at(3).unit
    for layer in range(4):
        attn_out = cache[f"blocks.{layer}.hook_attn_out"][0, -1] @ u
        assert float(att.heads[0, 1, layer].sum() + att.attn_bias[0, 1, layer]) == pytest.approx(float(attn_out), abs=1e-5)
        assert float(att.mlp[0, 1, layer]) == pytest.approx(float(cache[f"blocks.{layer}.hook_mlp_out"][0, -1] @ u), abs=1e-5)
    top = att.top_components(5)
    assert abs(top[0]["diff"]) >= abs(top[-1]["diff"])
    fig = attribution_figure(att)
    torch.testing.assert_close(torch.tensor(fig.data[0].z), att.mean_diff("heads"))


# --- the instruction span ----------------------------------------------------------------
@pytest.mark.parametrize("with_text, without_text", [
    ("Add a title in <<brackets>>. Write a poem about rain.", "Write a poem about rain."),
    ("Write a poem, with a title in <<brackets>>, about rain.", "Write a poem, about rain."),
    ("Write a poem about rain. Add a title in <<brackets>>.", "Write a poem about rain."),
])
def test_instruction_span_at_start_middle_end(tiny, with_text, without_text):
    tp = tokenize_pairs(tiny, _pairs([(with_text, without_text)]))[0]
    a, b = tp.span
    # an insertion: cutting the span out of the with prompt gives its twin, token for token
    assert list(tp.with_ids[:a] + tp.with_ids[b:]) == list(tp.without_ids)
    tok = tiny.workbench.formatter.tokenizer
    found = tok.decode(list(tp.with_ids[a:b]))
    assert "title in <<brackets>>" in found and b - a == len(tp.with_ids) - len(tp.without_ids)
    assert tp.suffix >= len(tok("<|im_end|>\n<|im_start|>assistant\n")["input_ids"])


def test_instruction_span_direct():
    assert instruction_span([1, 9, 9, 2, 3], [1, 2, 3]) == (1, 3)
    assert instruction_span([1, 2, 3, 9], [1, 2, 3]) == (3, 4)
    assert instruction_span([7, 1, 2], [1, 2]) == (0, 1)
    with pytest.raises(DatasetError, match="same tokens"):
        instruction_span([1, 2], [1, 2])
    with pytest.raises(DatasetError, match="adds no tokens"):
        instruction_span([1, 2], [1, 5, 2])


# --- attention to the instruction ----------------------------------------------------------
def test_attention_matches_unbatched_run_with_cache(tiny, title_pairs):
    att = instruction_attention(tiny, title_pairs, batch_size=2, progress=False)  # batches of different lengths
    tps = tokenize_pairs(tiny, title_pairs)
    for i, tp in enumerate(tps):
        _, cache = tiny.run_with_cache(torch.tensor([tp.with_ids]))
        for layer in range(4):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, -1]
            torch.testing.assert_close(att.weights[i, layer], pattern[:, tp.span[0]:tp.span[1]].sum(-1), rtol=1e-4, atol=1e-5)
    assert ((att.weights >= 0) & (att.weights <= 1 + 1e-5)).all()
    top = att.top_heads(3)
    assert top[0]["attention"] == pytest.approx(float(att.mean.max()))
    fig = attention_figure(att, k=3)
    torch.testing.assert_close(torch.tensor(fig.data[0].z), att.mean)


def test_attention_from_response_tokens_matches_run_with_cache(tiny, title_pairs):
    att = instruction_attention(tiny, title_pairs, batch_size=2, progress=False, response_tokens=3)
    responses = wb.generate(tiny, title_pairs.prompts(), max_new_tokens=3, return_tokens=True)
    tps = tokenize_pairs(tiny, title_pairs)
    assert att.response.shape == (3, 3, 4, tiny.cfg.n_heads)
    for i, (tp, resp) in enumerate(zip(tps, responses)):
        _, cache = tiny.run_with_cache(torch.tensor([list(tp.with_ids) + resp]))
        for r in range(len(resp)):
            pattern = cache["blocks.2.attn.hook_pattern"][0, :, len(tp.with_ids) + r]
            torch.testing.assert_close(att.response[i, r, 2], pattern[:, tp.span[0]:tp.span[1]].sum(-1), rtol=1e-4, atol=1e-5)
        assert torch.isnan(att.response[i, len(resp):]).all()  # after EOS: nothing made up
    torch.testing.assert_close(att.weights, instruction_attention(tiny, title_pairs, progress=False).weights)
    assert att.top_heads(2, source="response")[0]["attention"] == pytest.approx(float(att.response_mean.max()))


# --- activation patching -------------------------------------------------------------------
def test_patching_nothing_is_zero_everything_at_layer0_is_one(tiny):
    # same number of tokens (byte-level): every position has a counterpart
    pairs = _pairs([("Write it in French now.", "Write it in German now.")])
    tp = tokenize_pairs(tiny, pairs)[0]
    assert len(tp.with_ids) == len(tp.without_ids)
    for target in (None, "<<"):
        metric = make_metric(tiny, target)
        runs = clean_runs(tiny, tp, [0, 2], metric)
        n = len(runs.seq_without)
        eff = patch_effects(tiny, runs, [0, 2], [[], [(0, j) for j in range(n)], [(2, j) for j in range(n)], [(0, n - 1)]], metric)
        assert float(eff[0]) == pytest.approx(0.0, abs=1e-4)
        assert float(eff[1]) == pytest.approx(1.0, abs=1e-4)
        assert float(eff[2]) == pytest.approx(1.0, abs=1e-4)
        assert abs(float(eff[3])) < 1e-4  # the first token (BOS) is the same in both runs


def test_patching_grid_last_layer_last_position_is_one(tiny, title_pairs):
    p = activation_patching(tiny, title_pairs, layers=[0, 3], n_positions=30, batch_size=32, progress=False)
    assert p.effects.shape == (3, 2, 30)
    torch.testing.assert_close(p.effects[:, 1, 0], torch.ones(3), atol=1e-4, rtol=0)
    # the shortest without prompt ("Hi.") has fewer than 30 tokens: those cells are NaN, not made up
    short = len(tokenize_pairs(tiny, title_pairs)[0].without_ids)
    assert short < 30 and torch.isnan(p.effects[0, :, short:]).all() and not torch.isnan(p.effects[0, :, :short]).any()
    fig = patching_figure(p)
    torch.testing.assert_close(torch.tensor(fig.data[0].z, dtype=torch.float32), p.mean, equal_nan=True)


# --- necessity and sufficiency ----------------------------------------------------------------
def test_necessity_sufficiency_with_the_pairs_own_difference(tiny, title_pairs):
    one = title_pairs[1:2]
    w = wb.collect_activations(tiny, one.prompts(), progress=False)
    wo = wb.collect_activations(tiny, one.prompts_without_instruction(), progress=False)
    own = direction_from_activations(w, wo, layers=range(4), name="own", model_name="tiny-random-llama", n_model_layers=4)
    ns = necessity_sufficiency(tiny, one, own, progress=False)
    # the direction is exactly this pair's difference: adding its component = patching the whole last-token state
    torch.testing.assert_close(ns.sufficiency, ns.full_patch, atol=1e-4, rtol=0)
    assert float(ns.full_patch[0, -1]) == pytest.approx(1.0, abs=1e-4)
    assert float(ns.remaining[0, -1]) == pytest.approx(0.0, abs=1e-4)
    rows = ns.summary()
    assert [r["layer"] for r in rows] == [0, 1, 2, 3]
    fig = necessity_figure(ns)
    assert len(fig.data) == 7


# --- reliability ------------------------------------------------------------------------------
def test_reliability_on_synthetic_activations_with_a_known_direction():
    g = torch.Generator().manual_seed(0)
    n, d = 40, 32
    true = torch.zeros(d)
    true[3] = 1.0
    base = torch.randn(n, 3, d, generator=g)
    noise = torch.randn(n, 3, d, generator=g)
    strength = torch.tensor([0.0, 3.0, 0.6])  # layer 0: no direction; 1: strong; 2: weak
    with_acts = base + noise * 0.5 + strength[None, :, None] * true
    without_acts = base
    r = reliability_from_activations(with_acts, without_acts, layers=[5, 6, 7], n_splits=100, n_boot=100, n_draws=30, progress=False)
    s = {row["layer"]: row for row in r.summary()}
    assert s[6]["split_half"] > 0.9 and s[6]["bootstrap_lo"] > 0.9
    assert abs(s[5]["split_half"]) < 0.3  # pure noise: halves agree only by chance
    assert s[6]["split_half"] > s[7]["split_half"] > s[5]["split_half"]
    assert abs(s[6]["swap_baseline"]) < 0.2  # random label swaps remove the direction
    # shuffled pairing keeps the mean difference but not the pairing's cancellation of the query's own variance
    assert s[6]["swap_baseline"] + 0.3 < s[6]["shuffle_baseline"] < s[6]["split_half"]
    curve = r.by_size[1].mean(-1)
    assert list(r.sizes) == [2, 4, 8, 16, 32, 40] and bool((curve[1:] >= curve[:-1] - 0.02).all()) and float(curve[-1]) == pytest.approx(1.0)
    full = (with_acts - without_acts)[:, 1].mean(0)
    assert float(torch.nn.functional.cosine_similarity(full, true, dim=0)) > 0.95
    fig = reliability_figure(r, layer=6)
    assert fig.data[1].y == tuple(r.split_half.mean(-1).tolist()) or list(fig.data[1].y) == r.split_half.mean(-1).tolist()


def test_reliability_bad_input():
    x = torch.randn(3, 2, 8)
    with pytest.raises(DatasetError, match="at least 4 pairs"):
        reliability_from_activations(x, x, progress=False)
    with pytest.raises(ShapeError):
        reliability_from_activations(torch.randn(5, 2, 8), torch.randn(5, 2, 4), progress=False)


# --- bad input and the command line ---------------------------------------------------------------
def test_bad_input_is_one_clear_error(tiny, title_pairs, tiny_direction):
    with pytest.raises(DatasetError, match="identical"):
        direct_attribution(tiny, _pairs([("Same.", "Same.")]), tiny_direction, 1, progress=False)
    with pytest.raises(LayerError, match="out of range"):
        direct_attribution(tiny, title_pairs, tiny_direction, 7, progress=False)
    with pytest.raises(LayerError, match="out of range"):
        activation_patching(tiny, title_pairs, layers=[4], progress=False)
    other = direction_from_activations(torch.randn(2, 4, 576), torch.randn(2, 4, 576), layers=range(4), name="x",
                                       model_name="smollm2-135m-instruct", n_model_layers=30)
    with pytest.raises(ShapeError, match="d_model"):
        necessity_sufficiency(tiny, title_pairs, other, progress=False)
    renamed = direction_from_activations(torch.randn(2, 4, 64), torch.randn(2, 4, 64), layers=range(4), name="x",
                                         model_name="some-other-model", n_model_layers=4)
    with pytest.raises(ShapeError, match="some-other-model"):
        direct_attribution(tiny, title_pairs, renamed, 1, progress=False)
    from workbench.analysis import direction_reliability

    with pytest.raises(DatasetError, match="identical"):
        direction_reliability(tiny, _pairs([("A.", "B."), ("C.", "C."), ("D.", "E."), ("F.", "G.")]), progress=False)
    with pytest.raises(ShapeError, match="context"):
        instruction_attention(tiny, _pairs([("x" * 1100 + " Add a title.", "x" * 1100)]), progress=False)


def test_cli_analyze_writes_figure_and_record(tmp_path, capsys):
    from workbench.cli import main

    rc = main(["analyze", "reliability", "--model", "tiny-random-llama", "--n-train", "8", "--out", str(tmp_path), "--no-images"])
    assert rc == 0
    record = json.loads((tmp_path / "analysis_reliability_title.json").read_text())
    assert record["n_pairs"] == 8 and len(record["per_layer"]) == 4
    assert (tmp_path / "analysis_reliability_title.html").is_file() and (tmp_path / "plotly.min.js").is_file()
    rc = main(["analyze", "attribution", "--model", "tiny-random-llama", "--layer", "9", "--no-images", "--out", str(tmp_path)])
    assert rc == 2 and "layer 9 is out of range" in capsys.readouterr().err


def test_post_attention_norms_refuse_attribution_but_patch(tmp_path, title_pairs):
    """A random Gemma-3 (norms after attention and MLP): the head/MLP sum cannot hold, and says so; patching runs."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from workbench.errors import WorkbenchError
    from workbench.models.tiny import build_tokenizer

    tok = build_tokenizer()
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
    )
    torch.manual_seed(0)
    hf = Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    gemma = wb.load_model(str(tmp_path), device="cpu")
    direction = wb.compute_direction(gemma, title_pairs, progress=False)
    with pytest.raises(WorkbenchError, match="decomposition does not hold"):
        direct_attribution(gemma, title_pairs, direction, 1, progress=False)
    p = activation_patching(gemma, title_pairs, layers=[1], n_positions=2, progress=False)
    torch.testing.assert_close(p.effects[:, 0, 0], torch.ones(3), atol=1e-4, rtol=0)


# --- SmolLM2 --------------------------------------------------------------------------------------
@pytest.mark.integration
def test_smol_attribution_sum_and_span(smol):
    pairs = wb.load_pairs("format", "detectable_format:title", split="validation").head(3)
    direction = wb.compute_direction(smol, wb.load_pairs("format", "detectable_format:title").head(4), layers=[20], progress=False)
    att = direct_attribution(smol, pairs, direction, 20, progress=False)
    ref = wb.collect_activations(smol, pairs.prompts(), layers=[20], progress=False)[:, 0] @ direction.at(20).unit
    torch.testing.assert_close(att.component_sum[0], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert att.max_relative_error < 1e-4
    tok = smol.workbench.formatter.tokenizer
    for tp, row in zip(tokenize_pairs(smol, pairs), pairs):
        span = tok.decode(list(tp.with_ids[tp.span[0]:tp.span[1]])).strip()
        assert span and span in row.prompt and span not in row.prompt_without_instruction
