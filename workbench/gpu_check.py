"""``workbench gpu-check``: one command that checks a lent GPU machine end to end and writes one JSON and one Markdown page.

Steps, each timed and each allowed to fail without stopping the next (its error is recorded):

1. ``versions``: the packages pinned in ``pyproject.toml`` import, at versions within their pins (:mod:`workbench.pins`),
   and the device runs the chosen dtype (a tiny op);
2. ``bench``: ``workbench bench`` on a random-weight twin (default: ``llama3-3b`` in bfloat16, batches 1, 16, 64);
3. ``bench-sweep``: the sweep benchmark on the same twin;
4. ``reproduce``: ``reproduce format --quick`` on the same twin, loaded by path as any local checkpoint (float32,
   reproduce's own dtype), on a 3-layer grid.

The twins' weights are random: every figure is a speed, every table a check that the pipeline runs. ``quick=True``
shrinks everything (a 2-layer twin, a few prompts and tokens, no compiled step, no peers) so the whole check runs on a
CPU in well under a minute; the defaults are the GPU's settings.

Example (on the GPU machine): ``workbench gpu-check --out results/gpu-check``; on a CPU:
``workbench gpu-check --device cpu --twin smollm2 --quick --out /tmp/gpu-check``.
"""

from __future__ import annotations

import gc
import platform
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import WorkbenchError
from .io import write_json_atomic, write_text_atomic

STEPS = ("versions", "bench", "bench-sweep", "reproduce")
TITLE = "detectable_format:title"


@dataclass
class CheckSettings:
    """The sizes of every step; :func:`check_settings` gives the GPU's defaults or the ``--quick`` ones."""

    device: str
    twin: str = "llama3-3b"
    twin_layers: int | None = None
    dtype: str = "bfloat16"
    quick: bool = False
    # bench
    batches: tuple[int, ...] = (1, 16, 64)
    lengths: tuple[int, ...] = (128,)
    repeats: int = 3
    n_extract: int = 200
    peers: bool = True
    compiled: bool = True
    # bench-sweep
    sweep_n_train: int = 20
    sweep_n_val: int = 20
    sweep_new_tokens: int = 64
    sweep_unit: int = 20
    # reproduce format --quick (its preset, on these layers)
    reproduce_overrides: dict[str, Any] = field(default_factory=dict)

    def n_layers(self) -> int:
        from .models.twins import SHAPES

        return self.twin_layers or SHAPES[self.twin].n_layers

    def grid(self) -> list[int]:
        """Three layers through the middle of the model (one when it has fewer than four)."""
        n = self.n_layers()
        return sorted({n // 3, n // 2, (2 * n) // 3}) if n >= 4 else [n - 1]


def check_settings(device: str | None = None, twin: str | None = None, twin_layers: int | None = None,
                   dtype: str | None = None, quick: bool = False) -> CheckSettings:
    """The settings of a run, every option checked before any model is built or loaded (one-line errors)."""
    from .bench_options import check_bench_options
    from .models.loading import check_device

    device = check_device(device)
    s = CheckSettings(device=device, twin=twin or ("smollm2" if quick else "llama3-3b"), dtype=dtype or "bfloat16", quick=quick)
    if quick:
        s = replace(s, twin_layers=2, batches=(1, 2), lengths=(4,), repeats=1, n_extract=4, peers=False, compiled=False,
                    sweep_n_train=4, sweep_n_val=2, sweep_new_tokens=4, sweep_unit=2,
                    reproduce_overrides=dict(instructions=[TITLE], strengths=[1.0], n_train=4, n_val=2, n_eval=2,
                                             max_new_tokens=4))
    if twin_layers is not None:
        s.twin_layers = twin_layers
    check_bench_options(s.twin, s.twin_layers, s.dtype, s.device)
    return s


def run_gpu_check(out: str | Path, settings: CheckSettings, steps: tuple[str, ...] = STEPS,
                  say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``steps`` with ``settings``; write ``<out>/gpu-check.json`` and ``<out>/gpu-check.md``; return the report."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise WorkbenchError(f"unknown gpu-check step {unknown[0]!r}; choose from {', '.join(STEPS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if settings.device.startswith("cpu") and not settings.quick:
        say("note: no CUDA device chosen; these are the GPU's sizes (pass --quick for a tiny run on a CPU)")
    report: dict[str, Any] = {"machine": machine(settings.device), "settings": asdict(settings), "steps": {}}
    actions: dict[str, Callable[[], dict[str, Any]]] = {
        "versions": _versions, "bench": lambda: _bench(settings, say),
        "bench-sweep": lambda: _sweep(settings, say), "reproduce": lambda: _reproduce(settings, out, say),
    }
    threads = torch.get_num_threads()
    if settings.quick and settings.device.startswith("cpu"):
        torch.set_num_threads(1)  # tiny shapes on a shared CPU: one thread, as reproduce runs there (no spin-waiting)
    try:
        for name in [s for s in STEPS if s in steps]:
            report["steps"][name] = _step(name, actions[name], say)
            _free(settings.device)
    finally:
        torch.set_num_threads(threads)
    report["ok"] = all(r["ok"] for r in report["steps"].values())
    write_json_atomic(out / "gpu-check.json", report)
    write_text_atomic(out / "gpu-check.md", markdown(report) + "\n")
    say(f"gpu-check: {'all steps passed' if report['ok'] else 'FAILED: ' + ', '.join(k for k, v in report['steps'].items() if not v['ok'])}"
        f"; wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'}")
    return report


def _step(name: str, action: Callable[[], dict[str, Any]], say: Callable[[str], None]) -> dict[str, Any]:
    """Run one step: its result with ``ok`` and ``seconds``, or its error (one line, and the traceback's tail)."""
    say(f"== gpu-check: {name}")
    start = time.perf_counter()
    try:
        result = {"ok": True, **action()}
        if name == "versions":
            result["ok"] = all(r["satisfies_pin"] and r["imports"] for r in result["pins"])
    except Exception as exc:  # noqa: BLE001  (a failed step is recorded and the next one runs)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        result = {"ok": False, "error": f"{type(exc).__name__}: {first}",
                  "traceback": traceback.format_exc(limit=8).splitlines()[-12:]}
        say(f"   failed: {result['error']}")
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def machine(device: str) -> dict[str, Any]:
    """What the machine is: device name, torch and its CUDA, Python."""
    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available(), "python": platform.python_version(),
                            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


def _versions() -> dict[str, Any]:
    from .pins import check_pins

    return {"pins": check_pins()}


def _bench(s: CheckSettings, say: Callable[[str], None]) -> dict[str, Any]:
    from .bench import run_bench

    report = run_bench(device=s.device, batches=s.batches, lengths=s.lengths, n_extract=s.n_extract, repeats=s.repeats,
                       out=None, say=say, peers=s.peers, dtype=s.dtype, twin=s.twin, twin_layers=s.twin_layers,
                       compiled=s.compiled)
    return {"report": report}


def _sweep(s: CheckSettings, say: Callable[[str], None]) -> dict[str, Any]:
    from .experiments.bench_sweep import run_sweep_bench

    report = run_sweep_bench(device=s.device, layers=s.grid()[-1:] if s.quick else s.grid(), n_train=s.sweep_n_train,
                             n_val=s.sweep_n_val, max_new_tokens=s.sweep_new_tokens, unit_size=s.sweep_unit,
                             search_keep=1, out=None, say=say, dtype=s.dtype, twin=s.twin, twin_layers=s.twin_layers)
    return {"report": report}


def _reproduce(s: CheckSettings, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from .experiments.reproduce import ReproduceConfig, run_reproduce
    from .models.twins import twin_folder

    folder = twin_folder(s.twin, s.twin_layers, s.dtype, device=s.device, say=say)
    cfg = ReproduceConfig("format", model=str(folder), quick=True, device=s.device, out=str(out / "reproduce"),
                          layers=s.grid(), **s.reproduce_overrides)
    run = run_reproduce(cfg, say=say)
    return {"run": str(run), "layers": s.grid(), "overrides": s.reproduce_overrides,
            "tables": sorted(p.name for p in run.glob("*.md"))}


def _free(device: str) -> None:
    """Drop the finished step's models before the next step loads its own."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def markdown(report: dict[str, Any]) -> str:
    """The check as one Markdown page: machine, a table of steps, the pins, and each benchmark's own table."""
    m, s = report["machine"], report["settings"]
    twin = f"`{s['twin']}`" + (f" ({s['twin_layers']} layers)" if s["twin_layers"] else "")
    lines = [f"# gpu-check: {'passed' if report['ok'] else 'FAILED'}", "",
             f"{m.get('gpu', m['cpu'])} ({m['device']}), torch {m['torch']} (CUDA {m['cuda'] or 'none'}), Python {m['python']}. "
             f"Twin {twin}, random weights, {s['dtype']}{', quick sizes' if s['quick'] else ''}.", "",
             "| step | result | seconds | what |", "|---|---|---|---|"]
    for name, r in report["steps"].items():
        lines.append(f"| {name} | {'pass' if r['ok'] else '**FAIL**'} | {r['seconds']:.0f} | {_what(name, r)} |")
    steps = report["steps"]
    if "pins" in steps.get("versions", {}):
        from .pins import markdown as pins_table

        lines += ["", "## Pinned packages", "", pins_table(steps["versions"]["pins"])]
    if steps.get("bench", {}).get("report"):
        from .bench import markdown as bench_table

        lines += ["", "## Benchmark", "", bench_table(steps["bench"]["report"])]
    if steps.get("bench-sweep", {}).get("report"):
        from .experiments.bench_sweep import markdown as sweep_table

        lines += ["", "## Sweep benchmark", "", sweep_table(steps["bench-sweep"]["report"])]
    return "\n".join(lines)


def _what(name: str, r: dict[str, Any]) -> str:
    if not r["ok"] and "error" in r:
        return r["error"].replace("|", "\\|")
    if name == "versions":
        bad = [p["package"] for p in r["pins"] if not (p["satisfies_pin"] and p["imports"])]
        return f"{len(r['pins'])} pinned packages" + (f"; outside their pin or not importing: {', '.join(bad)}" if bad else
                                                       ", each within its pin and importing")
    if not r.get("report") and name in ("bench", "bench-sweep"):
        return ""
    if name == "bench":
        rows = r["report"]["rows"]
        best = max((x for x in rows if x["task"] == "generate"), key=lambda x: x["throughput"])
        return f"{len(rows)} rows; fastest: {best['variant']}, b{best['batch']}, {best['throughput']:.0f} tokens/s"
    if name == "bench-sweep":
        rows = r["report"]["rows"]
        return "; ".join(f"{x['variant']}: {x['units']} units in {x['seconds']:.0f} s" for x in rows)
    return f"tables in `{r['run']}`: {', '.join(r['tables'])}"
