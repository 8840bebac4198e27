"""The README's main job: compute three instruction directions on SmolLM2 and steer with them.

It prints unsteered vs steered responses to validation prompts that do not contain the
instruction, the measured rate at which each instruction is followed, and writes a figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .data import load_pairs
from .directions import direction_from_activations, pair_activations
from .evaluation import follow_rate
from .evaluation.quality import degeneration
from .evaluation.stats import wilson_interval
from .figures import projection_figure, save_figure
from .decoding import generate
from .io import write_json_atomic
from .models import load_model, model_info
from .steering import steer


@dataclass(frozen=True)
class DemoInstruction:
    """An instruction the demo steers toward, with the layer and mode measured to work on SmolLM2."""

    instruction_id: str
    family: str
    layer: int
    mode: str = "project"
    strength: float = 1.0  # as in the sweep: project -> target = strength x proj_with; add -> strength x |v_layer|
    kwargs: dict[str, Any] | None = None
    max_new_tokens: int = 64
    label: str = ""


# Settings chosen by hand on SmolLM2-135M-Instruct's validation prompts to pass reproduce's repetition rule (docs/demo.md).
DEMO_INSTRUCTIONS = (
    DemoInstruction("detectable_format:title", "format", layer=26, strength=0.5, max_new_tokens=48,
                    label="title in <<double angular brackets>>"),
    DemoInstruction("keywords:existence", "keywords", layer=24, kwargs={"keywords": ["ocean"]}, strength=1.0,
                    max_new_tokens=96, label="include the word 'ocean'"),
    DemoInstruction("detectable_format:number_highlighted_sections", "format", layer=26, strength=0.5, max_new_tokens=64,
                    label="2-4 *highlighted* sections"),
)


@dataclass
class DemoResult:
    """Measured follow rates for one instruction (shares of the evaluation prompts) and the responses' repetition."""

    instruction: DemoInstruction
    n_eval: int
    rate_unsteered: float
    rate_steered: float
    rate_instructed: float
    examples: list[tuple[str, str, str]] = field(default_factory=list)
    repetition_unsteered: float = 0.0  # mean share of repeated 3-grams (workbench.evaluation.quality.degeneration)
    repetition_steered: float = 0.0
    repetition_instructed: float = 0.0

    @property
    def meets_rule(self) -> bool:
        """Whether the steered responses meet reproduce's default repetition rule (at most the unsteered repetition
        + the allowed gain)."""
        from .experiments.sweep import DEFAULT_MAX_DEGENERATION_GAIN, degeneration_limit

        return self.repetition_steered <= degeneration_limit(self.repetition_unsteered, DEFAULT_MAX_DEGENERATION_GAIN)


def _repetition(texts: list[str]) -> float:
    return sum(degeneration(t) for t in texts) / len(texts) if texts else 0.0


def _shorten(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def run_demo(
    model_name: str = "smollm2-135m-instruct",
    device: str | None = None,
    n_eval: int = 20,
    n_train: int = 120,
    out_dir: Path = Path("figures"),
    results_dir: Path = Path("results/demo"),
    instructions: tuple[DemoInstruction, ...] = DEMO_INSTRUCTIONS,
    n_examples: int = 2,
    say: Callable[[str], None] = print,
) -> list[DemoResult]:
    """Run the demo end to end and return the measured rates."""
    from .io import check_output_dir

    check_output_dir(out_dir, "--out")  # both folders are checked before the model loads, not after the work
    check_output_dir(results_dir, "results folder")
    start = time.time()
    say(f"Loading {model_name} ...")
    model = load_model(model_name, device=device)
    say(f"  {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, prompt style {model_info(model).prompt_style}\n")
    results: list[DemoResult] = []
    figure_path = None
    for spec in instructions:
        train = load_pairs(spec.family, spec.instruction_id, split="train", kwargs=spec.kwargs).head(n_train)
        evals = load_pairs(spec.family, spec.instruction_id, split="validation", kwargs=spec.kwargs).head(n_eval)
        say(f"== {spec.instruction_id} ({spec.label}) ==")
        say(f"  computing the direction from {len(train)} train pairs ...")
        with_acts, without_acts = pair_activations(model, train)
        direction = direction_from_activations(
            with_acts, without_acts, layers=range(model.cfg.n_layers), name=spec.instruction_id,
            model_name=model_info(model).name, n_model_layers=model.cfg.n_layers, data_hash=train.hash(),
        )
        results_dir.mkdir(parents=True, exist_ok=True)
        direction.save(results_dir / f"{spec.instruction_id.replace(':', '_')}.safetensors")
        if figure_path is None:
            figure_path = save_figure(
                projection_figure(direction, with_acts, without_acts),
                out_dir / f"demo_{spec.instruction_id.split(':')[-1]}_projections.html",
            )
        plain = evals.prompts_without_instruction()
        gen = dict(max_new_tokens=spec.max_new_tokens, batch_size=10, progress=True)
        say(f"  generating for {len(evals)} validation prompts: unsteered, steered (layer {spec.layer}, {spec.mode}), with the instruction ...")
        unsteered = generate(model, plain, **gen)
        from .experiments.sweep import steering_spec

        with steer(model, steering_spec(direction, spec.layer, spec.strength, spec.mode)):
            steered = generate(model, plain, **gen)
        instructed = generate(model, evals.prompts(), **gen)
        result = DemoResult(
            instruction=spec,
            n_eval=len(evals),
            rate_unsteered=follow_rate(evals, unsteered),
            rate_steered=follow_rate(evals, steered),
            rate_instructed=follow_rate(evals, instructed),
            examples=list(zip(plain, unsteered, steered))[:n_examples],
            repetition_unsteered=_repetition(unsteered),
            repetition_steered=_repetition(steered),
            repetition_instructed=_repetition(instructed),
        )
        results.append(result)
        for prompt, before, after in result.examples:
            say(f"  prompt:    {_shorten(prompt)}")
            say(f"  unsteered: {_shorten(before)}")
            say(f"  steered:   {_shorten(after)}\n")
    say(_table(results))
    say(
        "Each cell: followed / prompts, the 95% Wilson interval, and the responses' repetition (mean share of\n"
        "repeated 3-grams; unsteered text is about 0.02-0.05). Steering that raises the rate by repeating itself\n"
        "fails reproduce's selection rule (repetition <= the --max-degeneration limit, docs/reproduce.md).\n"
        "A direction can only steer toward what the model represents: where SmolLM2-135M does not\n"
        "follow an instruction even when told, its direction moves little (see docs/demo.md)."
    )
    write_json_atomic(results_dir / "summary.json", [
        {"instruction_id": r.instruction.instruction_id, "kwargs": r.instruction.kwargs, "layer": r.instruction.layer,
         "mode": r.instruction.mode, "strength": r.instruction.strength, "n_eval": r.n_eval,
         "rate_without_instruction_unsteered": r.rate_unsteered, "rate_without_instruction_steered": r.rate_steered,
         "rate_with_instruction_unsteered": r.rate_instructed, "repetition_without_instruction_unsteered": r.repetition_unsteered,
         "repetition_without_instruction_steered": r.repetition_steered,
         "repetition_with_instruction_unsteered": r.repetition_instructed, "steered_meets_repetition_rule": r.meets_rule}
        for r in results
    ])
    say(f"\nFigure: {figure_path}\nDirections and summary: {results_dir}/\nDone in {time.time() - start:.0f} s.")
    return results


def _table(results: list[DemoResult]) -> str:
    head = ("| instruction | layer, mode, strength | no instruction, unsteered | no instruction, steered | "
            "instruction in prompt |")
    lines = [head, "|---|---|---|---|---|"]
    for r in results:
        n = r.n_eval

        def cell(rate: float, repetition: float) -> str:
            k = round(rate * n)
            lo, hi = wilson_interval(k, n)
            return f"{k}/{n} ({100 * lo:.0f}-{100 * hi:.0f}%), rep. {repetition:.2f}"

        rule = "" if r.meets_rule else " (fails the repetition rule)"
        lines.append(
            f"| {r.instruction.label} | {r.instruction.layer}, {r.instruction.mode}, {r.instruction.strength:g} | "
            f"{cell(r.rate_unsteered, r.repetition_unsteered)} | {cell(r.rate_steered, r.repetition_steered)}{rule} | "
            f"{cell(r.rate_instructed, r.repetition_instructed)} |"
        )
    return "\n".join(lines)
