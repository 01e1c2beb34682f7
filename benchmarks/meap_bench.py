"""MEAP collator throughput (examples/s, CPU) vs TRL's own collator on the same batches (issue 7: >= 0.9x).

The collator runs in the dataloader on the CPU, so this benchmark is CPU-only by design. Each case collates the
same list of examples with TRL's `DataCollatorForLanguageModeling` (transformers' `DataCollatorForLanguageModeling`
/ `DataCollatorForSeq2Seq` when TRL is not installed) and with `DataCollatorForMEAP` wrapping that collator;
median over repeats of the process CPU time for `--batches` batches (one torch thread), after warm-up.

    python benchmarks/meap_bench.py            # full sizes (B=8, up to 2048 tokens), ~1-2 min on 2 cores
    python benchmarks/meap_bench.py --smoke    # tiny sizes, a few seconds
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


SCRIPT = "meap_bench.py"


def _trl_collator(padding_free: bool):
    try:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    except ImportError:
        raise SystemExit("meap_bench.py compares with TRL's collator: pip install trl (it runs on the CPU)") from None
    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)


def _examples(kind: str, batch: int, length: int, vocab: int, seed: int) -> list[list[dict]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(8):  # 8 distinct batches, cycled
        rows = []
        for _ in range(batch):
            n = int(torch.randint(length // 2, length + 1, (1,), generator=g))
            ids = torch.randint(10, vocab, (n,), generator=g).tolist()
            ex = {"input_ids": ids}
            if kind == "padding_free":
                cut = sorted(torch.randint(1, n, (3,), generator=g).tolist())
                bounds = [0, *cut, n]
                ex["seq_lengths"] = [b - a for a, b in itertools.pairwise(bounds) if b > a]
            if kind.startswith("sft"):
                prompt = int(torch.randint(n // 4, n // 2, (1,), generator=g))
                ex["labels"] = [-100] * prompt + ids[prompt:]
            rows.append(ex)
        out.append(rows)
    return out


def _time_pair(base, meap, batches, n_batches: int, repeats: int, base_batches=None) -> tuple[float, float]:
    """Median CPU seconds of this process (one torch thread, so CPU time = work done, robust to other jobs on
    the machine) for `n_batches` batches of each collator; the two alternate so that load changes hit both."""
    base_batches = batches if base_batches is None else base_batches
    for rows, base_rows in zip(batches[:2], base_batches[:2]):
        base(base_rows), meap(rows)
    times = {"base": [], "meap": []}
    for r in range(repeats):
        order = (("base", base), ("meap", meap)) if r % 2 == 0 else (("meap", meap), ("base", base))
        for name, collate in order:
            data = base_batches if name == "base" else batches
            t0 = time.process_time()
            for i in range(n_batches):
                collate(data[i % len(data)])
            times[name].append(time.process_time() - t0)
    return statistics.median(times["base"]), statistics.median(times["meap"])


def run(smoke: bool, batches: int, repeats: int) -> list[dict]:
    from hf_plugins import DataCollatorForMEAP

    torch.set_num_threads(1)  # a dataloader worker's view
    batch, length, vocab = (4, 64, 500) if smoke else (8, 2048, 49152)
    cases = [
        ("pretrain", "pretrain", {}),
        ("padding_free", "pretrain", {}),
        ("sft_separate_rows", "sft", {"sft_mode": "separate_rows"}),
        ("sft_concat", "sft", {"sft_mode": "concat"}),
    ]
    metric = "examples/s (CPU time, 1 thread)"
    rows = []
    for name, mode, kw in cases:
        base = _trl_collator(padding_free=name == "padding_free")
        data = _examples(name, batch, length, vocab, seed=0)
        meap = DataCollatorForMEAP(
            base=base, mode=mode, mask_token_id=vocab, special_token_ids=[0, 1, 2], seed=0, **kw
        )
        t_base, t_meap = _time_pair(base, meap, data, batches, repeats)
        ours, ref = batch * batches / t_meap, batch * batches / t_base
        case = f"{name}, B={batch}, T<={length}, vs TRL collator on the same examples"
        rows.append({"case": case, "metric": metric, "ours": ours, "baseline": ref})
        print(f"{case}: MEAP {ours:,.0f} ex/s, TRL {ref:,.0f} ex/s, ratio {ours / ref:.2f}")
        if mode == "sft":
            # SFT MEAP adds rows / doubles lengths by design; these rows isolate the collator's own overhead by
            # letting TRL collate the very rows MEAP produces (built once, outside the timing), given as Python
            # lists (as a dataset.map preparation would) and as the NumPy arrays MEAP hands to TRL.
            grown = [meap._sft_examples(rows_, 0.1, np.random.default_rng(i)) for i, rows_ in enumerate(data)]
            as_lists = [
                [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in ex.items()} for ex in b] for b in grown
            ]
            for form, base_rows in (("lists", as_lists), ("arrays", grown)):
                t_grown, t_meap = _time_pair(base, meap, data, batches, repeats, base_batches=base_rows)
                ours, ref = batch * batches / t_meap, batch * batches / t_grown
                case = f"{name}, B={batch}, T<={length}, vs TRL collating MEAP's output rows ({form})"
                rows.append({"case": case, "metric": metric, "ours": ours, "baseline": ref})
                print(f"{case}: MEAP {ours:,.0f} ex/s, TRL {ref:,.0f} ex/s, ratio {ours / ref:.2f}")
    return rows


def _format(rows: list[dict]) -> list[str]:
    import transformers

    date = datetime.date.today().isoformat()
    versions = f"{torch.__version__} / {transformers.__version__}"
    return [
        f"| {date} | {SCRIPT} | CPU | {versions} | {r['case']} | {r['metric']} | {r['ours']:,.0f} | "
        f"{r['baseline']:,.0f} | {r['ours'] / r['baseline']:.2f} |"
        for r in rows
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes")
    p.add_argument("--append", action="store_true", help="append rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--batches", type=int, default=None, help="batches per timing (default 16, smoke 8)")
    p.add_argument("--repeats", type=int, default=10, help="timings per case; the median is reported")
    args = p.parse_args(argv)
    batches = args.batches or (8 if args.smoke else 16)
    rows = run(args.smoke, batches, args.repeats)
    lines = _format(rows)
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    if args.append:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
