"""Batch-16 steered decoding on SmolLM2: workbench vs steering-vectors vs repeng vs plain transformers, interleaved.

The peer rows of `workbench bench` alone, for a loaded machine: `ROUNDS` interleaved rounds of the four at batch 16,
the fastest of each kept, with `THREADS` torch threads (1 avoids stragglers when other jobs share the cores).
Same spec as the bench (title direction, layer 5/6 of the depth, add, coeff 8). Before timing, each peer's steered
tokens are compared with the workbench's on all 16 prompts x 16 tokens.

    .venv/bin/python docs/bench_peers_b16.py NEW_TOKENS ROUNDS THREADS [OUT.json]
"""
import json, sys, platform
import torch
from transformers import AutoModelForCausalLM
from workbench.bench import measure
from workbench.bench_peers import GENERATORS, peer_status, row_name
from workbench.data import load_pairs
from workbench.directions import compute_direction
from workbench.generation import generate
from workbench.models import load_model, model_info
from workbench.steering import SteeringSpec, steer

B, N, ROUNDS = 16, int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))
torch.manual_seed(0)
model = load_model("smollm2-135m-instruct", device="cpu")
info = model_info(model)
prompts = load_pairs("format", "detectable_format:title", split="validation").prompts_without_instruction()[:B]
title = compute_direction(model, load_pairs("format", "detectable_format:title", split="train").head(16), progress=False)
L = (5 * model.cfg.n_layers) // 6
spec = SteeringSpec(unit=title.at(L).unit, layer=L, coeff=8.0)
hf = AutoModelForCausalLM.from_pretrained(info.path, dtype=model.cfg.dtype).eval()
tok = model.tokenizer
def plain_hf(p, n):
    ids, mask = info.formatter.encode(p, padding_side="left")
    with torch.no_grad():
        hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
def wb_steered(p, n):
    with steer(model, spec):
        generate(model, p, max_new_tokens=n, min_new_tokens=n, batch_size=len(p))
variants = {"transformers generate, unsteered (ceiling)": plain_hf, "workbench, steered (add, 1 layer)": wb_steered}
versions = {}
for name in ("steering-vectors", "repeng"):
    st = peer_status(name); versions[name] = st.version or st.error
    if st.available:
        variants[row_name(name)] = lambda p, n, fn=GENERATORS[name]: fn(model, hf, spec, p, n)
# same-steering check on all 16 prompts x 16 tokens
with steer(model, spec):
    ref = generate(model, prompts, max_new_tokens=16, min_new_tokens=16, batch_size=B, return_tokens=True)
equal = {name: GENERATORS[name](model, hf, spec, prompts, 16).tolist() == ref for name in versions if peer_status(name).available}
print("tokens equal workbench (16 prompts x 16 tokens):", equal, flush=True)
for fn in variants.values():
    fn(prompts[:2], 4)  # warm-up
times = {k: [] for k in variants}
loads = []
for r in range(ROUNDS):
    for name, fn in variants.items():
        secs, _ = measure(lambda: fn(prompts, N), "cpu")
        times[name].append(secs)
        loads.append(open("/proc/loadavg").read().split()[0])
        print(f"round {r} {name:<46} {B * N / secs:7.1f} tokens/s ({secs:.1f} s) load {loads[-1]}", flush=True)
best = {k: B * N / min(v) for k, v in times.items()}
wb = best["workbench, steered (add, 1 layer)"]
out = {"command": f"python docs/bench_peers_b16.py {N} {ROUNDS} {torch.get_num_threads()}", "model": info.name, "batch": B, "new_tokens": N, "rounds": ROUNDS,
       "layer": L, "coeff": 8.0, "threads": torch.get_num_threads(), "torch": torch.__version__,
       "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "peer_versions": versions,
       "tokens_equal_workbench_16x16": equal, "seconds": times, "best_tokens_per_s": best,
       "ratios": {f"workbench steered / {k}": wb / v for k, v in best.items() if not k.startswith("workbench")},
       "load_average_1min_after_each_measurement": loads}
print(json.dumps(out, indent=1))
json.dump(out, open(sys.argv[4] if len(sys.argv) > 4 else "b16.json", "w"), indent=1)
