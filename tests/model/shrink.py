#!/usr/bin/env python3
"""Shrinks a replay input on which pretext and the model disagree.

usage: shrink.py PRETEXT_BIN CONFIG INPUT [--flush]
prints the minimal input on stdout, both outputs on stderr. It compares
what tests/model.rs compares (trigger_id and a dead letter's error aside).
An empty CONFIG file means the defaults.
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ("triggers", "holdout", "conversions", "dead-letter")
COUNTED = ("replayed ", "triggers: ", "conversions: ", "suppressed: ", "rejected: ")


def read(path):
    rows = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    for r in rows:
        r.pop("trigger_id", None)
        r.pop("error", None)
    return rows


def counted(text):
    return [line for line in text.splitlines() if line.startswith(COUNTED)]


def outputs(binary, lines, config, flush):
    with tempfile.TemporaryDirectory() as d:
        inp = os.path.join(d, "in.jsonl")
        with open(inp, "wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
        flags = ["--flush"] if flush else []
        args = [binary, "replay", "--input", inp, "--config", config, "--quiet"] + flags
        for flag, name in zip(("--output", "--holdout", "--conversions", "--dead-letter"), NAMES):
            args += [flag, f"{d}/{name}.jsonl"]
        run = subprocess.run(args, check=True, capture_output=True, text=True)
        got = [read(f"{d}/{n}.jsonl") for n in NAMES] + [counted(run.stderr)]
        os.mkdir(f"{d}/m")
        subprocess.run([sys.executable, f"{HERE}/contract_model.py", config, f"{d}/m", *flags, inp],
                       check=True)
        want = [read(f"{d}/m/{n}.jsonl") for n in NAMES]
        with open(f"{d}/m/summary.txt", encoding="utf-8") as f:
            want.append(counted(f.read()))
        return got, want


def main():
    flush = "--flush" in sys.argv
    binary, config, inp = [a for a in sys.argv[1:] if a != "--flush"]
    with open(inp, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()

    def differs(trial):
        got, want = outputs(binary, trial, config, flush)
        return got != want

    assert differs(lines), "no difference"
    chunk = (len(lines) + 1) // 2
    while chunk >= 1:
        i = 0
        while i < len(lines):
            trial = lines[:i] + lines[i + chunk:]
            if trial and differs(trial):
                lines = trial
            else:
                i += chunk
        chunk //= 2
    sys.stdout.buffer.write(b"".join(line + b"\n" for line in lines))
    got, want = outputs(binary, lines, config, flush)
    for who, out in (("pretext", got), ("model", want)):
        print(f"--- {who}", file=sys.stderr)
        for o in out:
            print(json.dumps(o, ensure_ascii=False), file=sys.stderr)


main()
