"""Interleaved benchmark rounds: a reference (TransformerLens, transformers, SAELens) and hooklens,
each a process that loads once and then answers commands on stdin with one "@@ JSON" line,
measured alternately so that the machine's load falls on both alike. Each round starts a fresh
process of each side and asks them in turn for every command (reference first in even rounds,
hooklens first in odd), so a pair's ratio compares two measurements seconds apart. With
--pairs P, each command is asked of both sides P times in a round, in turn (the order swapped
each time), and the round's ratio is the median of its P pairs' ratios: the host's other tenants
slow a machine for seconds at a time, and a pair of single measurements side by side is what
they disturb least.

The forward benchmark (interleave_forward.py) builds on run_rounds; the capture and SAE training
benchmarks run this file directly:

    python benches/interleave.py --reference "CMD ..." --hooklens "CMD ..." --ask capture [--ask ...]
        [--rounds 5] [--pairs 1] [--reference-name TL] [--out SUMMARY_JSON]

Every answer's numeric fields are summarised per command and side: a round's value is the median
of its answers, and over the rounds the median and the spread ((max - min) / median). Where both
sides answer "seconds" (or "forward_s", as two builds of bench_forward do: an old binary as the
reference), the per-round ratio reference / hooklens (hooklens's speedup) is given as median,
min and max. The load average is recorded before the first round and after each.
"""
import argparse
import datetime
import json
import shlex
import statistics
import subprocess
import sys
import time

# Between one side's answer and the next request: torch's OpenMP threads spin for a moment
# after their work, and would take a core from the other side's first product.
SETTLE_S = 0.2


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def spread(xs):
    """(max - min) / median, the relative width of the rounds' values."""
    return (max(xs) - min(xs)) / statistics.median(xs)


class Side:
    """A benchmark process: a header "@@ JSON" line once loaded, then one a command."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.header = self.read()

    def read(self):
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        sys.exit(f"{self.proc.args[0]} ended without answering (exit {self.proc.wait()})")

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.read()
        time.sleep(SETTLE_S)
        return answer

    def close(self):
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            sys.exit(f"{self.proc.args[0]} failed (exit {self.proc.returncode})")


def run_rounds(commands, asks, rounds, pairs=1):
    """Runs `rounds` rounds of the sides {"ref": argv, "hooklens": argv}, asking each command of
    `asks` of both in turn, `pairs` times. Returns ({side: [{"header": ..., ask: [answer, ...
    one a pair], ...} a round]}, loads)."""
    if rounds < 2:
        sys.exit("--rounds must be at least 2: a spread needs two rounds")
    if pairs < 1:
        sys.exit("--pairs must be at least 1")
    sides = {name: [] for name in commands}
    loads = [load()]
    for r in range(rounds):
        procs = {name: Side(cmd) for name, cmd in commands.items()}
        order = ["ref", "hooklens"] if r % 2 == 0 else ["hooklens", "ref"]
        answers = {name: {"header": procs[name].header} for name in procs}
        for ask in asks:
            for p in range(pairs):
                for name in order if p % 2 == 0 else order[::-1]:
                    answers[name].setdefault(ask, []).append(procs[name].ask(ask))
        for name in order:
            procs[name].close()
            sides[name].append(answers[name])
        loads.append(load())
        print(f"round {r + 1}/{rounds} done (load {loads[-1]:.2f})", file=sys.stderr, flush=True)
    return sides, loads


def pair_ratios(ref_answers, hooklens_answers, field):
    """A round's ratio reference / hooklens of `field`: the median of its pairs' ratios."""
    return statistics.median(r[field] / h[field] for r, h in zip(ref_answers, hooklens_answers))


def summarise(sides, asks):
    """Per command, per side, per numeric field: median, spread and the rounds' values (each the
    median of the round's answers); and the ratio reference / hooklens of "seconds" (or, failing
    that, "forward_s": two hooklens builds' `bench_forward --serve` against each other) where
    both sides answer it, a round's ratio the median of its pairs'."""
    out = {}
    for ask in asks:
        out[ask] = {}
        for name, rounds in sides.items():
            first = rounds[0][ask][0]
            fields = [k for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            out[ask][name] = {}
            for k in fields:
                xs = [statistics.median(a[k] for a in rd[ask]) for rd in rounds]
                out[ask][name][k] = {"median": statistics.median(xs), "spread": spread(xs) if xs[0] else 0.0, "rounds": xs}
        timed = [k for k in ("seconds", "forward_s") if all(k in out[ask][name] for name in sides)]
        if timed:
            ratios = [pair_ratios(r[ask], h[ask], timed[0]) for r, h in zip(sides["ref"], sides["hooklens"])]
            out[ask]["ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                 "spread": spread(ratios), "rounds": ratios}
    return out


def number(v):
    """v for a table: thousands whole and with separators, smaller values to 4 digits."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="the reference side's command line")
    ap.add_argument("--hooklens", required=True, help="hooklens's side's command line")
    ap.add_argument("--ask", action="append", required=True, help="a command both sides answer (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=1, help="times each command is asked of both sides in a round")
    ap.add_argument("--reference-name", default="reference")
    ap.add_argument("--out")
    a = ap.parse_args()
    commands = {"ref": shlex.split(a.reference), "hooklens": shlex.split(a.hooklens)}
    sides, loads = run_rounds(commands, a.ask, a.rounds, a.pairs)
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reference": a.reference_name, "commands": commands, "rounds": a.rounds, "pairs": a.pairs,
        "load_start": loads[0], "load_max": max(loads),
        "headers": {name: rounds[0]["header"] for name, rounds in sides.items()},
        "asks": summarise(sides, a.ask),
    }
    names = {"ref": a.reference_name, "hooklens": "hooklens"}
    print(f"\n{summary['date']}: {a.rounds} rounds of {a.pairs} pair(s), {a.reference_name} and hooklens alternating at each command")
    print(f"load average {loads[0]:.2f} at the start, at most {max(loads):.2f}")
    for name, header in summary["headers"].items():
        print(f"{names[name]}: {json.dumps(header)}")
    for ask, per in summary["asks"].items():
        print(f"\n{ask}: median over the rounds (spread)\n")
        print(f"| | {names['ref']} | hooklens |")
        print("|---|---|---|")
        for k in dict.fromkeys(list(per["ref"]) + list(per["hooklens"])):
            cell = lambda s: f"{number(per[s][k]['median'])} ({100 * per[s][k]['spread']:.0f} %)" if k in per[s] else ""
            print(f"| {k} | {cell('ref')} | {cell('hooklens')} |")
        if "ratio" in per:
            r = per["ratio"]
            print(f"\nhooklens faster by **{r['median']:.2f}×** (rounds {r['min']:.2f}–{r['max']:.2f}×, "
                  f"spread {100 * r['spread']:.0f} %)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
