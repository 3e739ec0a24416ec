"""Compare a benchmark between this tree and a baseline commit, in the same run.

Each commit measures itself: the baseline runs *its own* copy of the benchmark script against
*its own* package (a temporary ``git worktree`` of the baseline commit beside this checkout, first on ``PYTHONPATH``),
so a benchmark whose imports moved between the two commits still runs on both. The two are run
alternately, ``--rounds`` times each (baseline first), so that a change in the machine's load
hits both alike; every numeric key of the scripts' final JSON lines that both print is reported
(best and median of the rounds, and the ratio of the medians, this tree / baseline).

    python benchmarks/compare.py --baseline HEAD~1 --rounds 3 -- simulate.py --events 200000 --large-events 0
    python benchmarks/compare.py --baseline 6287ec5 -- pid.py --only chain --repeats 3

Prints a table, then one JSON line ``{"baseline": sha, "script": ..., "keys": {key: {"baseline":
[...], "current": [...], "ratio_median": r}}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _numbers(obj, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip(".")] = float(obj)
    return out


def run_once(tree: Path, script: str, args: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, str(tree / "benchmarks" / script), *args], cwd=tree, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{script} failed in {tree}:\n{r.stderr[-3000:]}")
    last = [line for line in r.stdout.splitlines() if line.startswith("{")][-1]
    return _numbers(json.loads(last))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="the baseline commit (any git revision)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each tree, alternated (default 2)")
    ap.add_argument("--baseline-args", default=None, metavar="ARGS",
                    help="other arguments for the baseline's script (one string, split like a shell), when its "
                         "options differ; default: the same as ours")
    ap.add_argument("script", help="the benchmark script in benchmarks/, e.g. simulate.py")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (after --)")
    a = ap.parse_args(argv)
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    import shlex

    base_args = args if a.baseline_args is None else shlex.split(a.baseline_args)
    sha = subprocess.run(["git", "rev-parse", a.baseline], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    # beside this checkout, so that the baseline's benchmarks find ../shared/data as ours do
    base = ROOT.parent / f".mambah-baseline-{sha[:10]}"
    if True:
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), sha], cwd=ROOT, check=True)
        try:
            runs: dict[str, list[dict[str, float]]] = {"baseline": [], "current": []}
            for i in range(a.rounds):
                for name, tree, targs in (("baseline", base, base_args), ("current", ROOT, args)):
                    runs[name].append(run_once(tree, a.script, targs))
                    print(f"round {i + 1} {name} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    keys = sorted(set.intersection(*(set(r) for rs in runs.values() for r in rs)))
    table = {}
    print(f"{'key':44s} {'baseline median':>16s} {'current median':>16s} {'current/baseline':>17s}")
    for k in keys:
        b = [r[k] for r in runs["baseline"]]
        c = [r[k] for r in runs["current"]]
        ratio = statistics.median(c) / statistics.median(b) if statistics.median(b) else float("nan")
        table[k] = {"baseline": b, "current": c, "ratio_median": ratio}
        print(f"{k:44s} {statistics.median(b):16.6g} {statistics.median(c):16.6g} {ratio:17.3f}")
    print(json.dumps({"baseline": sha, "script": a.script, "args": args, "baseline_args": base_args, "keys": table}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
