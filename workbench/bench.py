"""``workbench bench``: steered generation and activation extraction against their ceilings.

Every figure comes from one run on one model, so ratios between rows are meaningful even on a
noisy machine. Batch-1 decoding reads every weight once per token, so memory bandwidth divided
by the weight bytes is the floor-time ceiling on tokens per second; each row shows its fraction.
Every generation is forced to its full length (``min_new_tokens = max_new_tokens``). ``twin=NAME``
measures a random-weight model at a real model's shape (:mod:`workbench.models.twins`), ``dtype``
and ``batches`` fit the run to the hardware (:mod:`workbench.bench_options`).
"""

from __future__ import annotations

import gc
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .activations import collect_activations
from .bench_options import FORCED_LENGTH, check_bench_options, resolve_bench_model
from .bench_peers import PEERS, peer_notes, peer_variants
from .data import load_pairs
from .directions import compute_direction
from .generation import generate
from .io import write_json_atomic
from .models import load_model, model_info
from .steering import SteeringSpec, steer


@dataclass
class Row:
    """One measured configuration."""

    task: str
    variant: str
    batch: int
    new_tokens: int
    seconds: float
    throughput: float  # tokens/s for generation, prompts/s for extraction
    unit: str
    peak_mem_mb: float
    floor_fraction: float | None = None  # batch-1 tokens/s over the bandwidth ceiling


def _rss_mb(field: str) -> float:
    """Resident memory (``VmRSS``) or its peak since the last reset (``VmHWM``) in MiB (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def measure(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """Run ``fn`` once; return (seconds, peak extra memory in MiB: CUDA allocator or process RSS)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak()
        base = _rss_mb("VmRSS")
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _rss_mb("VmHWM") - base
    return time.perf_counter() - start, peak


def memory_bandwidth_gbs(device: str, n_bytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Sustained copy bandwidth (read + write bytes per second, best of ``repeats``) in GB/s."""
    src = torch.ones(n_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best / 1e9


def weight_bytes(model: Any) -> int:
    """Bytes of all parameters, tied ones counted once."""
    seen: set[int] = set()
    total = 0
    for p in model.original_model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def run_bench(
    model_name: str = "smollm2-135m-instruct",
    device: str | None = None,
    batches: tuple[int, ...] = (1, 16),
    lengths: tuple[int, ...] = (128, 256),
    n_extract: int = 200,
    repeats: int = 3,
    out: Path | None = Path("docs/bench.json"),
    say: Callable[[str], None] = print,
    peers: bool = True,
    dtype: str | None = None,
    twin: str | None = None,
    twin_layers: int | None = None,
    compiled: bool = True,
) -> dict[str, Any]:
    """Measure every row of the benchmark table and return it with the machine's figures.

    ``peers``: also steer with ``steering-vectors`` and ``repeng`` (:mod:`workbench.bench_peers`) where they
    import; an absent or broken peer gets a note instead of a row. ``dtype``: float32 (default), bfloat16 or
    float16. ``twin``: a random-weight model at a real shape instead of ``model_name`` (``twin_layers``: fewer
    layers). ``compiled=False`` skips the compiled step's rows (it compiles per batch size and length).
    """
    check_bench_options(twin, twin_layers, dtype, device)
    batches = tuple(batches)
    torch.manual_seed(0)
    model_name, twin_report = resolve_bench_model(model_name, twin, twin_layers, dtype, device, say)
    model = load_model(model_name, device=device, dtype=dtype)
    device = str(model.cfg.device)
    info = model_info(model)
    prompts = load_pairs("format", "detectable_format:title", split="validation").prompts_without_instruction()
    pairs = load_pairs("format", "detectable_format:title", split="train").head(16)
    title = compute_direction(model, pairs, progress=False)
    n_layers = model.cfg.n_layers
    layers3 = [n_layers // 2, (2 * n_layers) // 3, (5 * n_layers) // 6]
    others = [compute_direction(model, load_pairs("format", iid, split="train").head(16), progress=False)
              for iid in ("detectable_format:multiple_sections", "detectable_format:number_highlighted_sections")]
    one = [SteeringSpec(unit=title.at(layers3[2]).unit, layer=layers3[2], coeff=8.0)]
    three = [SteeringSpec(unit=d.at(layer).unit, layer=layer, coeff=8.0) for d, layer in zip([title, *others], layers3)]
    bandwidth = memory_bandwidth_gbs(device)
    wbytes = weight_bytes(model)
    floor_tps = bandwidth * 1e9 / wbytes
    display = info.name if twin is None else f"twin:{twin}"
    say(f"model {display} on {device} ({dtype or 'float32'}): weights {wbytes / 2**20:.0f} MiB, copy bandwidth "
        f"{bandwidth:.1f} GB/s, batch-1 ceiling {floor_tps:.0f} tokens/s")
    if twin_report:
        say(f"  random weights at the shape of {twin_report['shape_of']}: speed only")

    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf = AutoModelForCausalLM.from_pretrained(info.path, dtype=model.cfg.dtype).to(device).eval()
    hf_logging.enable_progress_bar()
    tok = model.tokenizer

    def plain_hf(batch_prompts: list[str], n: int) -> None:
        ids, mask = info.formatter.encode(batch_prompts, padding_side="left")
        with torch.no_grad():
            hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=n,
                        min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)

    def workbench(specs: list[SteeringSpec], use_cache: bool = True, backend: str = "auto"):
        def run(batch_prompts: list[str], n: int) -> None:
            with steer(model, *specs):
                generate(model, batch_prompts, max_new_tokens=n, min_new_tokens=n,
                         batch_size=len(batch_prompts), use_cache=use_cache, backend=backend)
        return run

    peer_rows: dict[str, Callable[[list[str], int], Any]] = {}
    peer_report: dict[str, dict[str, Any]] = {}
    if peers:
        peer_rows, peer_report = peer_variants(model, hf, one[0], prompts[:PEER_CHECK[0]], PEER_CHECK[1])
        for line in peer_notes(peer_report, *PEER_CHECK):
            say("  " + line)
    variants = {
        "transformers generate, unsteered (ceiling)": plain_hf,
        "workbench, steered (add, 1 layer)": workbench(one),
        **peer_rows,  # next to the workbench's steered row: the same spec, so a burst of load hits them alike
        "workbench, 3 directions at 3 layers": workbench(three),
        **({COMPILED: workbench(one, backend="compiled")} if compiled else {}),
    }
    rows: list[Row] = []
    compile_seconds: dict[str, float] = {}
    compiled_error: str | None = None
    plain_hf(prompts[:2], 4)  # warm-up
    workbench(one)(prompts[:2], 4)
    for n in lengths:
        for b in batches:
            if COMPILED in variants:  # it compiles once per batch size and cache-length bucket: time that apart
                try:
                    secs, _ = measure(lambda: variants[COMPILED](_batch(prompts, b), n), device)
                except Exception as exc:  # noqa: BLE001  (untried hardware: a note and the other rows, not nothing)
                    compiled_error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
                    say(f"  compiled step failed at b{b} x{n}, its rows are left out: {compiled_error}")
                    del variants[COMPILED]
                else:
                    compile_seconds[f"b{b} x{n}"] = secs
                    say(f"  compiled step for b{b} x{n}: first call {secs:.1f} s (compile included)")
            # batch-1 rows are short: interleave `repeats` rounds of every variant and keep each
            # one's fastest, so a burst of load on a shared machine does not decide a ratio
            best: dict[str, tuple[float, float]] = {}
            for _ in range(repeats if b == 1 else 1):
                for name, fn in variants.items():
                    secs, peak = measure(lambda: fn(_batch(prompts, b), n), device)
                    old = best.get(name, (float("inf"), 0.0))
                    best[name] = (min(old[0], secs), max(old[1], peak))
            for name, (secs, peak) in best.items():
                tps = b * n / secs
                rows.append(Row("generate", name, b, n, secs, tps, "tokens/s", peak, tps / floor_tps if b == 1 else None))
                say(_fmt(rows[-1]))
        secs, peak = measure(lambda: workbench(one, use_cache=False)(prompts[:1], n), device)
        rows.append(Row("generate", "reference: re-run full sequence per token, steered", 1, n, secs, n / secs,
                        "tokens/s", peak, n / secs / floor_tps))
        say(_fmt(rows[-1]))

    extract = (load_pairs("format", split="train").prompts() * 2)[:n_extract]
    secs, peak = measure(lambda: collect_activations(model, extract, batch_size=32, progress=False), device)
    rows.append(Row("extract", BATCHED + " (batch 32)", 32, 0, secs, n_extract / secs, "prompts/s", peak))
    say(_fmt(rows[-1]))
    secs, peak = measure(
        lambda: collect_activations(model, extract, batch_size=32, backend="bridge", progress=False), device
    )
    rows.append(Row("extract", BRIDGE_BATCHED + " (batch 32)", 32, 0, secs, n_extract / secs, "prompts/s", peak))
    say(_fmt(rows[-1]))

    def one_at_a_time() -> None:
        with torch.no_grad():
            for p in extract:
                ids, _ = info.formatter.encode([p])
                model.run_with_cache(ids.to(device))

    secs, peak = measure(one_at_a_time, device)
    rows.append(Row("extract", ONE_AT_A_TIME, 1, 0, secs, n_extract / secs, "prompts/s", peak))
    say(_fmt(rows[-1]))
    report = {
        "model": display, "device": device, "dtype": str(model.cfg.dtype).removeprefix("torch."),
        "weights": "random" if twin else "trained", "twin": twin_report, "generation": FORCED_LENGTH,
        "batches": list(batches), "prompt_tokens": _prompt_tokens(info, _batch(prompts, max(batches))),
        "machine": _machine(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "weight_bytes": wbytes, "bandwidth_gbs": bandwidth,
        "batch1_ceiling_tokens_per_s": floor_tps, "rows": [asdict(r) for r in rows], "ratios": ratios(rows),
        "compiled_first_call_seconds": compile_seconds, "compiled": compiled, "compiled_error": compiled_error,
        "peers": peer_report if peers else None, "peer_check": {"prompts": PEER_CHECK[0], "tokens": PEER_CHECK[1]},
    }
    say("\n" + markdown(report))
    if out is not None:
        write_json_atomic(out, report)
        say(f"\nwrote {out}")
    return report


def _batch(prompts: list[str], b: int) -> list[str]:
    """The first ``b`` prompts, cycled when a batch is larger than the 40 validation prompts."""
    return [prompts[i % len(prompts)] for i in range(b)]


def _prompt_tokens(info: Any, prompts: list[str]) -> dict[str, int]:
    """Shortest and longest prompt of the generation rows, in tokens (chat template included)."""
    lengths = [len(info.formatter.token_ids(p)) for p in prompts]
    return {"min": min(lengths), "max": max(lengths)}


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _fmt(r: Row) -> str:
    tokens = f" x{r.new_tokens}" if r.new_tokens else ""
    return f"  {r.variant:<52} b{r.batch:<3}{tokens:<6} {r.throughput:8.1f} {r.unit:<9} {r.seconds:7.2f} s  peak +{r.peak_mem_mb:.0f} MiB"


COMPILED = "workbench compiled step, steered (add, 1 layer)"
PEER_CHECK = (2, 8)  # prompts x tokens on which each peer's steered tokens are compared with the workbench's
BATCHED = "workbench batched last-token cache, plain layers + shared prefix"
BRIDGE_BATCHED = "workbench batched, bridge hooks, no shared prefix"
ONE_AT_A_TIME = "one prompt at a time, run_with_cache (all hooks)"


def _get(rows: list[Row], variant: str, batch: int, n: int) -> float:
    for r in rows:
        if r.variant.startswith(variant) and r.batch == batch and r.new_tokens == n:
            return r.throughput
    return float("nan")


def ratios(rows: list[Row]) -> dict[str, float]:
    """The target ratios of the benchmark issue, from one run's rows (a ratio whose rows were not measured is left out)."""
    steered, plain, ref = "workbench, steered", "transformers generate", "reference"
    big = max(r.batch for r in rows if r.task == "generate")
    batches = sorted({r.batch for r in rows if r.task == "generate" and r.variant.startswith(steered)})
    out = {}
    for length in sorted({r.new_tokens for r in rows if r.new_tokens}):
        out[f"steered b1 / transformers b1, {length} tokens (target >= 0.9)"] = _get(rows, steered, 1, length) / _get(rows, plain, 1, length)
        for b in [b for b in batches if b > 1]:
            out[f"steered b{b} / steered b1, {length} tokens (target >= 4 at b16)"] = _get(rows, steered, b, length) / _get(rows, steered, 1, length)
        out[f"steered b1 / reference b1, {length} tokens (target >= 8 at 256)"] = _get(rows, steered, 1, length) / _get(rows, ref, 1, length)
        out[f"compiled steered b1 / reference b1, {length} tokens (target >= 8 at 256)"] = _get(rows, COMPILED, 1, length) / _get(rows, ref, 1, length)
        out[f"compiled steered b1 / transformers b1, {length} tokens"] = _get(rows, COMPILED, 1, length) / _get(rows, plain, 1, length)
    for peer in PEERS:
        if not any(r.variant.startswith(peer + ",") for r in rows):
            continue
        for length in sorted({r.new_tokens for r in rows if r.new_tokens}):
            for b in batches:
                target = " (target > 1)" if b == big else ""
                out[f"steered b{b} / {peer} b{b}, {length} tokens{target}"] = _get(rows, steered, b, length) / _get(rows, peer + ",", b, length)
            out[f"compiled steered b{big} / {peer} b{big}, {length} tokens"] = _get(rows, COMPILED, big, length) / _get(rows, peer + ",", big, length)
    one = _get(rows, ONE_AT_A_TIME, 1, 0)
    out["batched extraction / one at a time (target >= 5)"] = _get(rows, BATCHED, 32, 0) / one
    out["batched through the bridge / one at a time (no target)"] = _get(rows, BRIDGE_BATCHED, 32, 0) / one
    return {k: v for k, v in out.items() if v == v}  # NaN: a row not measured (no batch 1, --no-compiled)


def markdown(report: dict[str, Any]) -> str:
    """The benchmark table as Markdown."""
    lines = [
        f"Model `{report['model']}` on {report['device']} ({report['machine']}, torch {report['torch']}); "
        f"weights {report['weight_bytes'] / 2**20:.0f} MiB; measured copy bandwidth {report['bandwidth_gbs']:.1f} GB/s "
        f"-> batch-1 ceiling {report['batch1_ceiling_tokens_per_s']:.0f} tokens/s.",
        *_about(report),
        "",
        "| task | variant | batch | new tokens | throughput | fraction of batch-1 ceiling | peak extra memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        frac = f"{r['floor_fraction']:.2f}" if r["floor_fraction"] is not None else ""
        lines.append(
            f"| {r['task']} | {r['variant']} | {r['batch']} | {r['new_tokens'] or ''} | {r['throughput']:.1f} {r['unit']} "
            f"| {frac} | {r['peak_mem_mb']:.0f} MiB |"
        )
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in report["ratios"].items()]
    if report.get("compiled_first_call_seconds"):
        firsts = ", ".join(f"{k}: {v:.0f} s" for k, v in report["compiled_first_call_seconds"].items())
        lines += ["", f"First call of the compiled step (compile included, excluded from its rows): {firsts}."]
    if report.get("compiled_error"):
        lines += ["", f"The compiled step failed, so it has no rows after that point: {report['compiled_error']}"]
    elif report.get("compiled") is False:
        lines += ["", "Compiled step not run (--no-compiled)."]
    if "peers" in report and report["peers"] is None:
        lines += ["", "Peers (steering-vectors, repeng) not run (--no-peers)."]
    if report.get("peers"):
        check = report.get("peer_check", {"prompts": PEER_CHECK[0], "tokens": PEER_CHECK[1]})
        lines += ["", "Peers:"] + [f"- {line}" for line in peer_notes(report["peers"], check["prompts"], check["tokens"])]
    return "\n".join(lines)


def _about(report: dict[str, Any]) -> list[str]:
    """What the table measured: dtype, random weights of a twin, generation forced to full length."""
    lines = [f"dtype {report.get('dtype', 'float32')}; generation {report.get('generation', FORCED_LENGTH)}."]
    twin = report.get("twin")
    if twin:
        c = twin["config"]
        tokens = report.get("prompt_tokens") or {}
        lines.append(
            f"**Random weights**: `{twin['name']}`, a twin at the shape of {twin['shape_of']} ({c['num_hidden_layers']}"
            f"{'' if c['num_hidden_layers'] == twin.get('real_layers') else ' of its ' + str(twin.get('real_layers'))} layers, d_model {c['hidden_size']}, {c['num_attention_heads']} heads, "
            f"{c['num_key_value_heads']} KV heads, MLP {c['intermediate_size']}, vocabulary {c['vocab_size']}) built from a "
            f"`transformers` config: speed only, its text means nothing. Its tokenizer is byte-level, so the prompts are "
            f"{tokens.get('min', '?')}-{tokens.get('max', '?')} tokens, 3-4x more than the real model's tokenizer makes.")
    return ["", *lines]


def main_json(path: Path) -> str:
    """Render a saved benchmark JSON as Markdown."""
    return markdown(json.loads(Path(path).read_text()))
