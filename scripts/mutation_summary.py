"""Count the verdicts of a mutmut run per module: `python scripts/mutation_summary.py RESULTS PATTERN...`.

RESULTS is the output of `mutmut results --all true` ("    NAME: verdict" per line); only the mutants whose
names match a PATTERN (fnmatch, as `mutmut run` matched them) are counted. Prints a table per module, the
killed share of the mutants that ran, and the survivors' names (show one with `mutmut show NAME`).
"""

from __future__ import annotations

import fnmatch
import sys
from collections import Counter, defaultdict
from pathlib import Path

# mutmut's words; "timeout" and "segfault" end the mutant's tests abnormally, so they count as killed
KILLED = {"killed", "timeout", "segfault"}


def module_of(name: str) -> str:
    """mitosis_cli.analysis.chunks.x_draw_chunks__mutmut_3 -> mitosis_cli.analysis.chunks"""
    return name.split(".x")[0] if ".x" in name else name.rsplit(".", 1)[0]


def main(results: Path, patterns: list[str]) -> int:
    verdicts: dict[str, Counter[str]] = defaultdict(Counter)
    survivors = []
    for line in results.read_text().splitlines():
        name, _, verdict = line.strip().rpartition(": ")
        if not name or not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        verdicts[module_of(name)][verdict] += 1
        if verdict not in KILLED and verdict != "not checked":
            survivors.append(f"{verdict}: {name}")
    total: Counter[str] = Counter()
    print(f"{'module':42} {'mutants':>8} {'killed':>7} {'survived':>9} {'other':>6} {'killed %':>9}")
    for module in sorted(verdicts):
        v = verdicts[module]
        total.update(v)
        print(_row(module, v))
    print(_row("all", total))
    print(f"\nnot killed ({len(survivors)}):")
    print("\n".join(sorted(survivors)))
    return 0


def _row(label: str, v: Counter[str]) -> str:
    ran = sum(n for verdict, n in v.items() if verdict != "not checked")
    killed = sum(v[k] for k in KILLED)
    other = ran - killed - v["survived"]
    share = f"{100 * killed / ran:.1f}" if ran else "-"
    return f"{label:42} {ran:8d} {killed:7d} {v['survived']:9d} {other:6d} {share:>9}"


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
