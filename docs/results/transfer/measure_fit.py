"""Held-out fit of maps between two models' residual streams, and the cosine of a transferred direction with the
target's own, on real models (issue 25). Writes ``<out>/<source>-to-<target>.{json,md}``.

    .venv/bin/python docs/results/transfer/measure_fit.py --source qwen2.5-coder-0.5b-instruct \
        --target smollm2-135m-instruct --n-fit 480 --n-train 120 --threads 1

The maps are fitted on the last token of ``--n-fit`` train prompts of format instructions other than ``--instruction``
(its pairs excluded: the "leak to avoid"); the fit is measured on the 20% held out. The directions (source and the
target's own) come from ``--n-train`` train pairs of the instruction. Cosine intervals: 95% percentile bootstrap over
the pairs (both directions recomputed on each resample). The null: cosines of random directions with the own direction.
The control refits the same layer pairs on the fit texts plus the instruction's own pairs (the leak), as documented.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import workbench as wb
from workbench.activations import collect_activations
from workbench.experiments.config import TITLE_ID
from workbench.transfer import fit_map_from_activations, match_from_activations
from workbench.transfer.experiment import fit_texts


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--source", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--instruction", default=TITLE_ID)
    p.add_argument("--n-fit", type=int, default=480)
    p.add_argument("--n-train", type=int, default=120)
    p.add_argument("--boot", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="/tmp/transfer-acts")
    p.add_argument("--out", default="docs/results/transfer")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    pairs = wb.load_pairs("format", args.instruction, split="train").head(args.n_train)
    texts = fit_texts([args.instruction], wb.load_pairs("format", args.instruction), args.n_fit, args.seed).prompts()
    acts, names, shapes = {}, {}, {}
    for side, name in (("s", args.source), ("t", args.target)):
        cache = Path(args.cache) / f"{name}-{args.instruction.replace(':', '_')}-{args.n_fit}-{args.n_train}-{args.seed}.safetensors"
        if cache.is_file():
            stored, meta = wb.load_activations(cache)
            n_layers, d_model, names[side] = meta["n_layers"], meta["d_model"], meta["model"]
        else:
            model = wb.load_model(name, device="cpu")
            names[side], n_layers, d_model = wb.model_info(model).name, int(model.cfg.n_layers), int(model.cfg.d_model)
            stored = torch.cat([collect_activations(model, x, batch_size=16, progress=True)
                                for x in (texts, pairs.prompts(), pairs.prompts_without_instruction())])
            wb.save_activations(cache, stored, model=names[side], n_layers=n_layers, d_model=d_model)
            del model
        shapes[side] = (n_layers, d_model)
        n_fit, n_pairs = len(texts), len(pairs)
        acts[side] = (stored[:n_fit], stored[n_fit:n_fit + n_pairs], stored[n_fit + n_pairs:])
    acts_s, acts_t = acts["s"], acts["t"]
    (ns, ds), (nt, dt) = shapes["s"], shapes["t"]
    print(f"activations ready after {time.time() - start:.0f} s: {names['s']} {ns}x{ds}, {names['t']} {nt}x{dt}")
    result = {"source": names["s"], "target": names["t"], "instruction": args.instruction, "n_fit_texts": len(texts),
              "n_train_pairs": len(pairs), "seed": args.seed, "position": "last token",
              "fit_texts": f"{len(texts)} train prompts of format instructions other than {args.instruction} (its pairs excluded)",
              "kinds": {}}
    own = (acts_t[1] - acts_t[2]).mean(0)  # [nt, dt]
    g = torch.Generator().manual_seed(args.seed)
    boots = [torch.randint(0, len(pairs), (len(pairs),), generator=g) for _ in range(args.boot)]
    rand = torch.randn(1000, dt, generator=g)
    for kind in ("affine", "orthogonal"):
        t0 = time.time()
        match = match_from_activations(acts_s[0], acts_t[0], source=(names["s"], range(ns), ns), target=(names["t"], range(nt), nt),
                                       kind=kind, seed=args.seed)
        rows = []
        for s, t in match.pairs("target"):
            m = match.maps[(s, t)]
            mw, mwo = m(acts_s[1][:, s]), m(acts_s[2][:, s])
            moved = (mw - mwo).mean(0)
            own_t = own[t]
            boot = torch.tensor([_cos((mw[i] - mwo[i]).mean(0), (acts_t[1][i, t] - acts_t[2][i, t]).mean(0)) for i in boots])
            null = torch.nn.functional.cosine_similarity(rand, own_t[None], dim=-1)
            leak = fit_map_from_activations(torch.cat([acts_s[0][:, s], acts_s[1][:, s], acts_s[2][:, s]]),
                                            torch.cat([acts_t[0][:, t], acts_t[1][:, t], acts_t[2][:, t]]), kind=kind,
                                            source=(names["s"], s, ns), target=(names["t"], t, nt), seed=args.seed)
            rows.append({"target_layer": t, "source_layer": s, "r2": m.metrics["r2"], "centred_cosine": m.metrics["centred_cosine"],
                         "n_fit": m.metrics["n_fit"], "n_heldout": m.metrics["n_heldout"],
                         "ridge": m.regularisation.get("ridge"), "cos_transferred_own": round(_cos(moved, own_t), 4),
                         "cos_lo": round(float(boot.quantile(0.025)), 4), "cos_hi": round(float(boot.quantile(0.975)), 4),
                         "null_lo": round(float(null.quantile(0.025)), 4), "null_hi": round(float(null.quantile(0.975)), 4),
                         "cos_leak_control": round(_cos(leak.map_vector(acts_s[1][:, s].mean(0) - acts_s[2][:, s].mean(0)), own_t), 4),
                         "leak_control_n_fit": leak.metrics["n_fit"]})
        result["kinds"][kind] = {"pairs": rows, "table": match.rows(), "seconds": round(time.time() - t0, 1)}
        print(f"{kind}: {len(match.rows())} layer pairs fitted in {time.time() - t0:.0f} s")
    result["elapsed_s"] = round(time.time() - start, 1)
    result["torch_threads"] = args.threads
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{names['s']}-to-{names['t']}-{args.instruction.split(':')[-1]}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(_markdown(result, args))
    print(f"wrote {out / stem}.json/.md in {time.time() - start:.0f} s")


def _markdown(r: dict, args: argparse.Namespace) -> str:
    cmd = (f"docs/results/transfer/measure_fit.py --source {args.source} --target {args.target} --instruction {args.instruction} "
           f"--n-fit {args.n_fit} --n-train {args.n_train} --boot {args.boot} --threads {args.threads} --seed {args.seed}")
    lines = [f"## {r['source']} -> {r['target']}: maps and the transferred `{r['instruction']}` direction", "",
             f"Command: `.venv/bin/python {cmd}` ({r['elapsed_s'] / 60:.1f} min including activations). "
             f"Maps fitted on the last token of {r['fit_texts']}; fit measured on the held-out 20%. Directions from "
             f"{r['n_train_pairs']} train pairs. For each target layer the source layer with the best held-out R2 is shown. "
             "cos: transferred vs the target's own direction, 95% bootstrap interval over pairs; null: 95% band of random "
             "directions' cosine with the own direction; leak control: the same layer pair refitted with the instruction's "
             "own pairs among the fit texts (what the map must not be fitted on).", ""]
    for kind, part in r["kinds"].items():
        lines += [f"### {kind} maps", "", "| target layer | source layer | held-out R2 | centred cos (fit) | n_fit / n_heldout | "
                  "cos transferred vs own [95%] | null band | cos, leak control |", "|---|---|---|---|---|---|---|---|"]
        for x in part["pairs"]:
            lines.append(f"| {x['target_layer']} | {x['source_layer']} | {x['r2']:.3f} | {x['centred_cosine']:.3f} | "
                         f"{x['n_fit']} / {x['n_heldout']} | {x['cos_transferred_own']:.3f} [{x['cos_lo']:.3f}, {x['cos_hi']:.3f}] | "
                         f"[{x['null_lo']:.3f}, {x['null_hi']:.3f}] | {x['cos_leak_control']:.3f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
