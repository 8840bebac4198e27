"""``workbench models --check PATH``: does the workbench steer and read this checkpoint the same on every path?

For a few prompts of uneven length, batched, and a random direction at the middle layer, the
steered greedy tokens of the bridge, plain and compiled generation paths must equal the
reference loop's (which re-runs the whole sequence per token through the TransformerLens
bridge) for add, project and ablate at all / prompt / generated positions; and activations
read from the plain ``transformers`` layers must equal the bridge's hook values.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

CHECK_PROMPTS = (
    "Hi.",
    "Explain why the sky is blue to a child.",
    "Write a story about a fox who finds a lantern at night, in three short paragraphs.",
)
SETTINGS = tuple(itertools.product(("add", "project", "ablate"), ("all", "prompt", "generated")))


@dataclass(frozen=True)
class PathCheck:
    """The outcome on one path: ``passed`` is None for the reference itself and for skipped paths."""

    path: str
    passed: bool | None
    detail: str
    stats: dict = field(default_factory=dict, compare=False)

    def line(self) -> str:
        verdict = {True: "pass", False: "FAIL", None: "info"}[self.passed]
        return f"{self.path:<11} {verdict:<4} {self.detail}"


def _distinct(rows: Sequence[Sequence[int]]) -> float:
    return sum(len(set(r)) for r in rows) / max(len(rows), 1)


def check_model(
    model: Any,
    prompts: Sequence[str] = CHECK_PROMPTS,
    max_new_tokens: int = 10,
    layer: int | None = None,
    seed: int = 0,
    compiled: bool = True,
    settings: Sequence[tuple[str, str]] = SETTINGS,
) -> list[PathCheck]:
    """Compare every generation path with the reference loop, and plain with bridge extraction.

    >>> for result in check_model(load_model("path/to/checkpoint")):
    ...     print(result.line())
    """
    from ..activations import collect_activations
    from ..decoding import generate
    from ..steering import steer

    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    layer = n_layers // 2 if layer is None else layer
    prompts = list(prompts)
    g = torch.Generator().manual_seed(seed)
    unit = torch.randn(d_model, generator=g)
    unit = unit / unit.norm()
    acts = collect_activations(model, prompts, layers=[layer], backend="bridge", progress=False)[:, 0]
    size = float(acts.norm(dim=-1).mean())  # the residual stream's typical norm sets the strength
    kw = dict(max_new_tokens=max_new_tokens, batch_size=len(prompts), return_tokens=True)
    paths = ["bridge", "plain"] + (["compiled"] if compiled else [])
    baseline = generate(model, prompts, use_cache=False, **kw)
    agree = {p: 0 for p in paths}
    first_diff: dict[str, str] = {}
    changed = 0
    for mode, positions in settings:
        with steer(model, unit, layer=layer, coeff=size, mode=mode, positions=positions, target=-size):
            ref = generate(model, prompts, use_cache=False, **kw)
            for path in paths:
                out = generate(model, prompts, backend=path, **kw)
                if out == ref:
                    agree[path] += 1
                elif path not in first_diff:
                    row = next(i for i, (a, b) in enumerate(zip(out, ref)) if a != b)
                    first_diff[path] = f"first difference: {mode}/{positions}, prompt {row}"
        changed += ref != baseline
    results = [PathCheck(
        "reference", None,
        f"use_cache=False loop, the baseline; steering changed the output in {changed}/{len(settings)} settings; "
        f"unsteered output {_distinct(baseline):.1f} distinct tokens per row of {max_new_tokens}",
        {"changed": changed, "settings": len(settings), "distinct_per_row": [len(set(r)) for r in baseline]},
    )]
    for path in paths:
        ok = agree[path] == len(settings)
        detail = f"{agree[path]}/{len(settings)} settings give the reference's greedy tokens"
        results.append(PathCheck(path, ok, detail if ok else f"{detail}; {first_diff[path]}"))
    if not compiled:
        results.append(PathCheck("compiled", None, "skipped (--no-compiled)"))
    plain = collect_activations(model, prompts, backend="plain", progress=False)
    bridge = collect_activations(model, prompts, backend="bridge", progress=False)
    diff = float((plain - bridge).abs().max())
    tol = 1e-4 * max(float(bridge.abs().max()), 1.0)
    results.append(PathCheck("extraction", diff <= tol, f"plain vs bridge, {n_layers} layers: max |difference| {diff:.2e} "
                                                     f"(tolerance {tol:.1e})"))
    return results


def print_checks(name_or_path: str, device: str | None = None, compiled: bool = True, max_new_tokens: int = 10) -> int:
    """Load ``name_or_path``, print one line per path; exit status 0 when every path passes, else 1."""
    from .loading import load_model

    model = load_model(name_or_path, device=device)
    print(f"checking {name_or_path}: {int(model.cfg.n_layers)} layers, d_model {int(model.cfg.d_model)}, "
          f"{len(CHECK_PROMPTS)} prompts of uneven length in one batch, {max_new_tokens} new tokens, a random "
          f"direction at layer {int(model.cfg.n_layers) // 2}, {len(SETTINGS)} mode x positions settings", flush=True)
    failed = 0
    for result in check_model(model, max_new_tokens=max_new_tokens, compiled=compiled):
        print(result.line(), flush=True)
        failed += result.passed is False
    if failed:
        print(f"{failed} path(s) disagree: use backend='bridge' (or use_cache=False) with this model", file=sys.stderr)
    return 1 if failed else 0
