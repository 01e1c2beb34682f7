"""The README's headline table, generated from benchmarks/RESULTS.md: for each headline figure, the latest current
(not superseded) row of its case.

    python benchmarks/headline.py            # print the table
    python benchmarks/headline.py --write    # write it into README.md between <!-- headline --> markers
    python benchmarks/headline.py --check    # exit 1 when README.md and RESULTS.md disagree (a test runs this)

A figure names its script, a regular expression the row's case starts with, one its metric matches in full, and
the sentence to print from the row's cells (`ours`, `baseline`, `ratio`: the medians; `inverse` = 1 / ratio;
`overhead` = ratio - 1). `benchmarks/run_benchmarks.py` re-measures every case, and its rows match these figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

import _results


README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- headline -->", "<!-- /headline -->"


@dataclasses.dataclass(frozen=True)
class Figure:
    plugin: str
    script: str
    case: str  # the row's case starts with a match of this
    metric: str  # the row's metric matches this in full
    text: str  # str.format over ours, baseline, ratio, inverse, overhead
    key: str = "ratio"  # the cell whose range over repeats the table shows


_Q = r"Qwen2-0\.5B"
_LIFT = f"{_Q} shape, bf16, B8xT2048, r=16"
_SEFT = f"{_Q} shape, 50% Wanda, bf16, B=8, T=2048, r=16"
_NT = r"LLaMA-130M shape, 3 trails x 8 (of 12 )?blocks, density 0\.9"
_MEAP = r"examples/s \(CPU time, 1 thread\).*"
FIGURES = (
    Figure("LIFT r=16", "lift_bench.py", _LIFT, r"ms/step, LIFT( cache_effective_weight=False)? vs full FT", "step time {ratio:.2f}x full FT's (default settings)"),
    Figure("LIFT r=16", "lift_bench.py", _LIFT, r"ms/step, LIFT( cache_effective_weight=False)? vs LoRA r16", "step time {ratio:.2f}x LoRA r=16's"),
    Figure("LIFT r=16", "lift_bench.py", _LIFT, r"peak GiB, LIFT( cache_effective_weight=False)? vs LoRA r16", "peak memory {ratio:.2f}x LoRA r=16's"),
    Figure("LIFT r=16", "lift_bench.py", _LIFT, r"ms/step, LIFT cache_effective_weight=True vs full FT", "with `cache_effective_weight=True`: step time {ratio:.2f}x full FT's"),
    Figure("LIFT r=16", "lift_bench.py", _LIFT, r"peak GiB, LIFT cache_effective_weight=True vs LoRA r16", "with `cache_effective_weight=True`: peak memory {ratio:.2f}x LoRA r=16's"),
    Figure("LIFT r=16", "lift_bench.py", f"{_Q} shape, bf16, r=16", r"optimizer state MiB, LIFT vs full FT", "optimizer state {ratio:.1%} of full FT's"),
    Figure("LIFT r=16", "lift_bench.py", f"{_Q} shape, bf16, r=16", r"refresh every mask s \(eigh\) vs goal", "re-selecting every mask: {ours:.2f} s", key="ours"),
    Figure("SEFT", "seft_bench.py", _SEFT, r"step ms, SEFT \(avg over a steady ΔT=20 cycle\) vs full FT", "step time {ratio:.2f}x full FT's (a steady ΔT=20 cycle, its update included)"),
    Figure("SEFT", "seft_bench.py", _SEFT, r"tokens/s, SEFT vs full FT", "tokens/s {ratio:.2f}x full FT's"),
    Figure("SEFT", "seft_bench.py", _SEFT, r"peak GiB, SEFT vs LoRA", "peak memory {ratio:.2f}x LoRA r=16's"),
    Figure("Stable-SPAM", "stable_spam_bench.py", rf"{_Q} shapes, 488\.5M fp32 params", r"step ms, ours StableSPAM fused vs torch AdamW fused", "fused step {ours:.1f} ms = {ratio:.2f}x torch's fused AdamW"),
    Figure("Stable-SPAM", "stable_spam_bench.py", rf"{_Q} shapes, 488\.5M fp32 params", r"step ms, ours StableSPAM fused vs pytorch-optimizer \S+ StableSPAM( foreach)?", "{inverse:.0f}x faster than pytorch-optimizer's StableSPAM"),
    Figure("AlphaDecay", "alphadecay_bench.py", f"{_Q}-shaped 168 linear weights, fp32", r"ESD refresh s, ours \(auto = [^)]*\) vs per-matrix Gram eigvalsh", "ESD refresh of 168 matrices {ours:.2f} s = {ratio:.2f}x a per-matrix eigvalsh loop"),
    Figure("AlphaDecay", "alphadecay_bench.py", f"{_Q}-shaped model, B=8 T=2048", r"step \+ refresh/500 s, AlphaDecay\(AdamW\)( merged groups)? vs AdamW \(HF 2 groups\)", "training step, refresh every 500 updates included: {overhead:+.1%} over fused AdamW's"),
    Figure("CoE", "coe_bench.py", r"same compute: CoE C=2 K=4 vs Qwen3-MoE K=8", r"tokens/s, CoE vs Qwen3-MoE", "C=2 K=4: {ratio:.2f}x the tokens/s of transformers' Qwen3-MoE K=8"),
    Figure("LNS", "lns_bench.py", r"LLaMA-130M \(paper\), bf16, B=64, T=256", r"tokens/s, lns vs stock transformers model", "{ratio:.3f}x the tokens/s of transformers' Llama"),
    Figure("LNS", "lns_bench.py", f"{_Q} shape, bf16, B=8, T=2048", r"tokens/s, lns vs stock transformers model", "{ratio:.3f}x the tokens/s of transformers' Qwen2"),
    Figure("NeuroTrails", "neurotrails_bench.py", _NT, r"tokens/s, NeuroTrails \(update amortised\) vs 3 independent models", "{ratio:.2f}x the tokens/s of 3 independent models"),
    Figure("NeuroTrails", "neurotrails_bench.py", _NT, r"topology update share of training time at update_frequency 50.*", "topology updates {ours:.1%} of training time", key="ours"),
    Figure("MEAP collator", "meap_bench.py", r"pretrain, B=8, T<=2048, vs TRL collator on the same examples", _MEAP, "{ratio:.2f}x the throughput of TRL's collator (pre-training mode)"),
    Figure("MEAP collator", "meap_bench.py", r"pretrain, B=8, T<=2048, MEAP given arrays vs TRL given arrays", _MEAP, "masking alone {ratio:.2f}x TRL's collator given parsed arrays"),
)  # fmt: skip


def pick(figure: Figure, rows: list[_results.Row]) -> _results.Row:
    """The latest current row of the figure's case (rows are in file order, which is time order)."""
    found = [
        r
        for r in rows
        if r.script == figure.script and re.match(figure.case, r.case) and re.fullmatch(figure.metric, r.metric)
    ]
    if not found:
        raise LookupError(f"no current row of {figure.script} for {figure.case!r} / {figure.metric!r}")
    return found[-1]


def line(figure: Figure, r: _results.Row) -> str:
    cells = {k: _results.cell_value(getattr(r, k)) for k in ("ours", "baseline", "ratio")}
    values = {k: (v[0] if v else float("nan")) for k, v in cells.items()}
    values.update(inverse=1 / values["ratio"], overhead=values["ratio"] - 1)
    repeats = re.search(r", (\d+) repeats", r.case)
    spread = cells[figure.key] and cells[figure.key][1]
    rng = f"{repeats.group(1)} repeats: [{spread[0]:.3g}, {spread[1]:.3g}]" if repeats and spread else "one run"
    return f"| {figure.plugin} | {figure.text.format(**values)} | {rng} | {r.case} | {r.device} | {r.date} |"


def table(results: Path | None = None) -> str:
    rows = _results.current_rows(results or _results.RESULTS)
    lines = [
        START,
        "Generated by `python benchmarks/headline.py --write` from the latest current row of each case in",
        "[benchmarks/RESULTS.md](benchmarks/RESULTS.md) (a test checks that the two agree). Range: [min, max] of the",
        "figure over the run's repeats (rows measured before repeats: one run).",
        "",
        "| plugin | ours vs stock | range | case | device | date |",
        "| --- | --- | --- | --- | --- | --- |",
        *(line(f, pick(f, rows)) for f in FIGURES),
        END,
    ]
    return "\n".join(lines)


def replace_block(readme_text: str, block: str) -> str:
    if readme_text.count(START) != 1 or readme_text.count(END) != 1:
        raise ValueError(f"README.md needs exactly one {START} ... {END} block")
    head, rest = readme_text.split(START)
    return head + block + rest.split(END, 1)[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the table into README.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when README.md's table is not the generated one")
    args = p.parse_args(argv)
    block = table()
    if not (args.write or args.check):
        print(block)
        return 0
    text = README.read_text()
    new = replace_block(text, block)
    if args.check:
        if new != text:
            print("README.md's headline table differs from benchmarks/RESULTS.md: run python benchmarks/headline.py --write", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
