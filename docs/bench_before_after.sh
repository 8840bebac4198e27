#!/usr/bin/env bash
# `workbench bench` of an old commit beside this checkout, in one run on one machine, alternating old new new old,
# then one Markdown table (each run's throughput and new / old of the means). Usage, from the repository root with
# `make setup` done:  docs/bench_before_after.sh OLD_REV [OUT_DIR]   (about 6 min a run on the 2-core CPU machine)
set -euo pipefail
old_rev=${1:?usage: docs/bench_before_after.sh OLD_REV [OUT_DIR]}
out=${2:-/tmp/bench-before-after}
root=$(pwd)
mkdir -p "$out"
tree="$out/old-tree"
git worktree add -f --detach "$tree" "$old_rev" >/dev/null
trap 'git -C "$root" worktree remove --force "$tree"' EXIT
run() {  # $1 old|new, $2 round; the old commit's package shadows the editable install through PYTHONPATH
  local path=""
  [ "$1" = old ] && path="$tree"
  (cd "$out" && PYTHONPATH="$path" "$root/.venv/bin/python" -m workbench.cli bench --lengths 128 --repeats 3 --no-peers \
     --n-extract 100 --out "$out/$1-$2.json") > "$out/$1-$2.log" 2>&1
}
run old 1; run new 1; run new 2; run old 2
"$root/.venv/bin/python" - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
runs = {k: json.load(open(f"{out}/{k}.json")) for k in ("old-1", "new-1", "new-2", "old-2")}
rows = {}
for name, d in runs.items():
    for r in d["rows"]:
        rows.setdefault((r["task"], r["variant"], r["batch"]), {})[name] = r["throughput"]
print("| task | variant | batch | old (run 1, run 2) | new (run 1, run 2) | new / old |")
print("|---|---|---|---|---|---|")
for (task, variant, batch), v in rows.items():
    if len(v) == 4:
        unit = "tokens/s" if task == "generate" else "prompts/s"
        ratio = statistics.mean([v["new-1"], v["new-2"]]) / statistics.mean([v["old-1"], v["old-2"]])
        print(f"| {task} | {variant} | {batch} | {v['old-1']:.1f}, {v['old-2']:.1f} {unit} | "
              f"{v['new-1']:.1f}, {v['new-2']:.1f} {unit} | {ratio:.2f} |")
PY
