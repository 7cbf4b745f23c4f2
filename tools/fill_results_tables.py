#!/usr/bin/env python3
"""Regenerates the measured tables in docs/RESULTS.md from benchmark cell files.

  python3 tools/fill_results_tables.py [--score PATH] [--out runs/benchmark-g75]

TABLE_G75, TABLE_IDENTITY, TABLE_UNSAFE and TABLE_STYLE are the benchmark's own Markdown tables
(`score benchmark --finished-only` reads the finished cells and measures nothing new).
TABLE_SWEEP lists SCORE's seed-0 cell of every class against issue 5's targets.
Cells live under runs/, which is not committed: a block whose run folder is not on this machine
is left as it is, and a row (concept, method) that the folder lacks keeps its committed text, so
one new cell can be added without re-measuring the rest.
Standard library only.
"""
import argparse, glob, json, os, re, subprocess, sys

CLASSES = "sneaker,trouser,bag,t-shirt,pullover,dress,coat,sandal,shirt,ankle boot"
METHODS = "original,uce,esd-x,esd-u,score,score-retain-anchor"
TARGETS = {"acc_e": 0.05, "acc_g": 0.10, "acc_s_relative": 0.90, "leakage_bound": 0.6}


EMOJI_METHODS = "original,uce,esd-x,esd-u,score"
# The emoji tasks' cells: (block, flags). Identity erases detective; Santa Claus's original row
# shows why the default target is not used (docs/RESULTS.md).
EMOJI_TABLES = [
    ("TABLE_IDENTITY", ["--task", "identity", "--concepts", "detective,Santa Claus", "--out", "runs/benchmark-identity"]),
    ("TABLE_UNSAFE", ["--task", "unsafe", "--out", "runs/benchmark-unsafe"]),
    ("TABLE_STYLE", ["--task", "style", "--seeds", "2", "--out", "runs/benchmark-style"]),
]


def benchmark_table(score, flags):
    run = subprocess.run([score, "benchmark"] + flags + ["--finished-only", "--table", os.devnull],
                         capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit("score benchmark --finished-only failed:\n" + run.stderr)
    return "\n".join(l for l in run.stdout.splitlines() if l.startswith("|"))


def sweep_table(out):
    rows = ["| class | Acc_e orig → SCORE | Acc_g orig → SCORE | Acc_s orig → SCORE (of orig) "
            "| H_o | Î (nats) | bound | ASR paraphrase | UnlearnDiffAtk pre → post | targets missed |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(glob.glob(os.path.join(out, "*", "score-seed0.json"))):
        cell = json.load(open(path))
        e, o = cell["evaluation"], cell["evaluation"]["original"]
        missed = [name for name, bad in [
            ("Acc_e", e["acc_e"] > TARGETS["acc_e"]),
            ("Acc_g", e["acc_g"] > TARGETS["acc_g"]),
            ("Acc_s", e["acc_s_relative"] < TARGETS["acc_s_relative"]),
            ("bound", e["leakage_bound"] > TARGETS["leakage_bound"])] if bad]
        rows.append("| %s | %.1f → **%.1f** | %.1f → **%.1f** | %.1f → **%.1f** (%.1f%%) | %.1f "
                    "| %.3f | %.3f | %.1f | %.0f → %.0f | %s |" % (
            e["concept"], o["acc_e"] * 100, e["acc_e"] * 100, o["acc_g"] * 100, e["acc_g"] * 100,
            o["acc_s"] * 100, e["acc_s"] * 100, e["acc_s_relative"] * 100, e["h_o"] * 100,
            e["leakage_nats"], e["leakage_bound"], cell["asr_paraphrase"] * 100,
            cell["asr_unlearndiffatk_pre"] * 100, cell["asr_unlearndiffatk_post"] * 100,
            ", ".join(missed) or "none"))
    return "\n".join(rows)


def block_body(text, tag):
    match = re.search(r"<!-- %s -->\n(.*?)\n?<!-- /%s -->" % (tag, tag), text, re.S)
    if not match:
        sys.exit("docs/RESULTS.md has no <!-- %s --> ... <!-- /%s --> block" % (tag, tag))
    return match.group(1)


def merged_table(old, new, methods):
    """The new table's header and rows, plus the old rows whose (concept, method) it lacks."""
    def rows(table):
        lines = [l for l in table.splitlines() if l.startswith("|")]
        return lines[:2], {tuple(c.strip() for c in l.split("|")[1:3]): l for l in lines[2:]}
    header, fresh = rows(new)
    _, kept = rows(old)
    if not fresh:
        return old
    everything = {**kept, **fresh}
    concepts = list(dict.fromkeys(k[0] for k in list(kept) + list(fresh)))
    order = methods.split(",")
    keys = sorted(everything, key=lambda k: (concepts.index(k[0]), order.index(k[1]) if k[1] in order else len(order)))
    return "\n".join(header + [everything[k] for k in keys])


def fill_benchmark_block(text, tag, score, flags, out, methods):
    if not os.path.isdir(out):
        print("%s: %s is not here; the block is kept" % (tag, out))
        return text
    return replace_block(text, tag, merged_table(block_body(text, tag), benchmark_table(score, flags), methods))


def replace_block(text, tag, body):
    pattern = re.compile(r"<!-- %s -->.*?<!-- /%s -->" % (tag, tag), re.S)
    if not pattern.search(text):
        sys.exit("docs/RESULTS.md has no <!-- %s --> ... <!-- /%s --> block" % (tag, tag))
    return pattern.sub(lambda _: "<!-- %s -->\n%s\n<!-- /%s -->" % (tag, body, tag), text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--score", default=".build/release/score")
    parser.add_argument("--out", default="runs/benchmark-g75")
    parser.add_argument("--results", default="docs/RESULTS.md")
    args = parser.parse_args()
    text = open(args.results).read()
    text = fill_benchmark_block(text, "TABLE_G75", args.score, [
        "--concepts", CLASSES, "--methods", METHODS, "--seeds", "2", "--leakage-trajectories", "32", "--out", args.out],
        args.out, METHODS)
    for tag, flags in EMOJI_TABLES:
        out = flags[flags.index("--out") + 1]
        text = fill_benchmark_block(text, tag, args.score, flags + ["--methods", EMOJI_METHODS], out, EMOJI_METHODS)
    if glob.glob(os.path.join(args.out, "*", "score-seed0.json")):
        text = replace_block(text, "TABLE_SWEEP", sweep_table(args.out))
    else:
        print("TABLE_SWEEP: no SCORE cells under %s; the block is kept" % args.out)
    temporary = args.results + ".tmp"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, args.results)


if __name__ == "__main__":
    main()
