#!/usr/bin/env python3
"""Shrinks a replay input on which pretext and the model disagree.

usage: shrink.py PRETEXT_BIN INPUT CONFIG [--flush]  -> prints the minimal input
"""
import json, os, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

def outputs(binary, lines, config, flush):
    with tempfile.TemporaryDirectory() as d:
        inp = os.path.join(d, "in.jsonl")
        open(inp, "w").write("".join(lines))
        args = [binary, "replay", "--input", inp, "--output", f"{d}/t", "--holdout", f"{d}/h",
                "--conversions", f"{d}/c", "--config", config, "--quiet"] + (["--flush"] if flush else [])
        subprocess.run(args, check=True, capture_output=True)
        os.mkdir(f"{d}/m")
        subprocess.run([sys.executable, f"{HERE}/contract_model.py", inp, config]
                       + (["--flush"] if flush else []) + [f"{d}/m"], check=True)
        def read(p):
            rows = [json.loads(l) for l in open(p)] if os.path.exists(p) else []
            for r in rows: r.pop("trigger_id", None)
            return rows
        got = [read(f"{d}/{x}") for x in "thc"]
        want = [read(f"{d}/m/{x}.jsonl") for x in ("triggers", "holdout", "conversions")]
        return got, want

def differs(binary, lines, config, flush):
    got, want = outputs(binary, lines, config, flush)
    return got != want

def main():
    binary, inp, config = sys.argv[1:4]
    flush = "--flush" in sys.argv
    lines = open(inp).readlines()
    assert differs(binary, lines, config, flush), "no difference"
    chunk = len(lines) // 2
    while chunk >= 1:
        i = 0
        while i < len(lines):
            trial = lines[:i] + lines[i + chunk:]
            if trial and differs(binary, trial, config, flush):
                lines = trial
            else:
                i += chunk
        chunk //= 2
    sys.stdout.write("".join(lines))
    got, want = outputs(binary, lines, config, flush)
    print("--- pretext", file=sys.stderr)
    for g in got: print(json.dumps(g), file=sys.stderr)
    print("--- model", file=sys.stderr)
    for w in want: print(json.dumps(w), file=sys.stderr)

main()
