"""The paper's model families as a tested guarantee: random-weight twins loaded by path, as a user would.

Each twin (Phi-3 fused projections, Gemma-2 soft-capping and a sliding window shorter than the
prompts, Mistral sliding window, Llama-3 rope scaling + GQA, Qwen2 QKV biases) must give the
reference loop's steered greedy tokens on the bridge, plain and compiled paths for add / project
/ ablate at all / prompt / generated positions, batched with uneven lengths, and plain
extraction must equal the bridge's. The compiled path (torch.compile, tens of seconds per
shape on a CPU) and the full 3 x 3 matrix run on the Llama-3 twin; the others cover each mode and
each position once, and ``workbench models --check`` runs the full matrix on the Qwen2 twin.
"""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.decoding import decode_packed
from workbench.decoding.prompt_states import PromptStates
from workbench.cli import main
from workbench.models.check import CHECK_PROMPTS, SETTINGS, check_model
from workbench.models.loading import model_info
from workbench.models.twins import TWINS, WINDOW, build_twin

COMPILED = {"llama3"}
FULL = {"llama3"}  # the whole mode x positions matrix; the other twins cover each mode and each position once
DIAGONAL = (("add", "all"), ("project", "prompt"), ("ablate", "generated"))
N_NEW = 5


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    return {family: build_twin(family, root / family) for family in TWINS}


@pytest.mark.parametrize("family", [f for f in TWINS if f != "qwen2"])
def test_every_path_matches_the_reference(twin_dir, family):
    model = wb.load_model(str(twin_dir[family]), device="cpu")
    prompt_lengths = [len(model.workbench.formatter.token_ids(p)) for p in CHECK_PROMPTS]
    assert len(set(prompt_lengths)) == len(prompt_lengths) and min(prompt_lengths) > WINDOW
    settings = SETTINGS if family in FULL else DIAGONAL
    results = check_model(model, max_new_tokens=N_NEW, compiled=family in COMPILED, settings=settings)
    by_path = {r.path: r for r in results}
    failed = [r.line() for r in results if r.passed is False]
    assert not failed, failed
    expected = {"bridge", "plain", "extraction"} | ({"compiled"} if family in COMPILED else set())
    assert {p for p, r in by_path.items() if r.passed} == expected
    stats = by_path["reference"].stats
    # the equality proves something only if the text varies and steering moves it
    assert min(stats["distinct_per_row"]) >= 3, stats
    assert stats["changed"] >= len(settings) - 1, stats


def test_gemma2_plain_path_keeps_soft_capping(twin_dir):
    """SDPA drops attention-logit soft-capping: the plain Gemma-2 path must match eager transformers."""
    from transformers import AutoModelForCausalLM

    folder = twin_dir["gemma2"]
    model = wb.load_model(str(folder), device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    prompt = CHECK_PROMPTS[2]
    ids, _ = model.workbench.formatter.encode([prompt])
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states
    plain = wb.collect_activations(model, [prompt], layers=[0, 1], backend="plain", progress=False)[0]
    truth = torch.stack([hidden[1][0, -1], hidden[2][0, -1]])
    assert torch.allclose(plain, truth, atol=1e-4)
    hf_sdpa = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    with torch.no_grad():
        sdpa = hf_sdpa(ids, output_hidden_states=True).hidden_states[1][0, -1]
    assert not torch.allclose(sdpa, truth[0], atol=1e-3), "soft-capping should matter at this scale"


def test_models_check_cli(twin_dir, capsys):
    rc = main(["models", "--check", str(twin_dir["qwen2"]), "--device", "cpu", "--no-compiled",
                "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line.strip()}
    assert rc == 0, out
    assert lines == {"reference": "info", "bridge": "pass", "plain": "pass", "compiled": "info", "extraction": "pass"}


@pytest.mark.parametrize("family", list(TWINS))
def test_packed_rows_match_each_setting_alone(twin_dir, family):
    """Greedy per-row batches (the workbench's own decode loop, static cache, ended rows dropped) give every
    twin's tokens decoded under ``steer`` alone: sliding windows shorter than the prompts, soft-capping, biases."""
    model = wb.load_model(str(twin_dir[family]), device="cpu")
    acts = wb.collect_activations(model, CHECK_PROMPTS, layers=[1], progress=False)[:, 0]
    unit = acts.mean(0) / acts.mean(0).norm()
    settings = [[], [wb.SteeringSpec(unit=unit, layer=1, coeff=8.0)],
                [wb.SteeringSpec(unit=unit, layer=1, mode="project", target=-float(acts.mean(0).norm()), positions="prompt")]]
    alone = []
    for specs in settings:
        with wb.steer(model, *specs) if specs else torch.no_grad():
            alone.append(wb.generate(model, CHECK_PROMPTS, max_new_tokens=N_NEW, batch_size=len(CHECK_PROMPTS),
                                     return_tokens=True, backend="bridge"))
    assert len({str(a) for a in alone}) == len(settings), "the settings should steer differently"
    prompts = [p for _ in settings for p in CHECK_PROMPTS]
    rows = [s for s in settings for _ in CHECK_PROMPTS]
    packed = wb.generate(model, prompts, max_new_tokens=N_NEW, batch_size=len(prompts), return_tokens=True, row_steering=rows)
    n = len(CHECK_PROMPTS)
    assert [packed[i * n:(i + 1) * n] for i in range(len(settings))] == alone
    # prompt passes started from kept unsteered states (where no window is shorter than a row)
    states = PromptStates(keep_hidden=True, prefix=model_info(model).formatter.template_prefix())
    started = decode_packed(model, prompts, rows, max_new_tokens=N_NEW, batch_size=len(prompts), states=states).tokens
    assert started == packed
