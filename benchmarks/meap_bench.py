"""MEAP collator throughput (examples/s, CPU) vs TRL's own collator on the same batches (issue 7: >= 0.9x).

The collator runs in the dataloader on the CPU, so this benchmark is CPU-only by design. Each case collates the
same list of examples with TRL's `DataCollatorForLanguageModeling` and with `DataCollatorForMEAP` wrapping that
collator. Measurement (robust to other jobs on a shared machine):

- one thread everywhere (`torch.set_num_threads(1)`, BLAS / OpenMP pools set to 1 before NumPy is imported), and
  process CPU time (`time.process_time`), i.e. work done, not wall time; the garbage collector is off while timing;
- warm-up: every batch goes through both collators twice before timing;
- paired, short repeats: in each of `--rounds` rounds every batch is collated once by each collator, back to back,
  the order alternating with the batch and the round, and each pair gives one ratio t(TRL) / t(MEAP);
- the ratio reported is the median of those paired ratios, with their inter-quartile range in brackets; the
  examples/s columns are batch size / median time of each collator.

    python benchmarks/meap_bench.py            # full sizes (B=8, up to 2048 tokens), ~1-2 min on 2 cores
    python benchmarks/meap_bench.py --smoke    # tiny sizes, a few seconds
"""

from __future__ import annotations

import os


for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before NumPy / torch load their thread pools

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


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


def _time_pair(base, meap, batches, rounds: int, base_batches=None) -> dict:
    """Paired CPU times of `base(base_batches[i])` and `meap(batches[i])`, one pair per batch and round, the order
    alternating; returns the median times and the quartiles of the paired ratios t(base) / t(meap)."""
    base_batches = batches if base_batches is None else base_batches
    for _ in range(2):  # warm-up: caches, lazy imports, the generator's first seeding
        for rows, base_rows in zip(batches, base_batches):
            base(base_rows), meap(rows)
    t_base, t_meap, ratios = [], [], []
    clock = time.process_time
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for i, (rows, base_rows) in enumerate(zip(batches, base_batches)):
                calls = [(base, base_rows), (meap, rows)]
                if (r + i) % 2:
                    calls.reverse()
                times = []
                for fn, arg in calls:
                    t0 = clock()
                    fn(arg)
                    times.append(clock() - t0)
                tb, tm = times if (r + i) % 2 == 0 else times[::-1]
                if tb > 0 and tm > 0:
                    t_base.append(tb)
                    t_meap.append(tm)
                    ratios.append(tb / tm)
    finally:
        gc.enable()
    q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
    return {
        "t_base": float(np.median(t_base)),
        "t_meap": float(np.median(t_meap)),
        "ratio": float(q50),
        "ratio_q25": float(q25),
        "ratio_q75": float(q75),
        "pairs": len(ratios),
    }


def _row(case: str, metric: str, batch: int, timing: dict) -> dict:
    row = {"case": case, "metric": metric, "ours": batch / timing["t_meap"], "baseline": batch / timing["t_base"]}
    row.update({key: timing[key] for key in ("ratio", "ratio_q25", "ratio_q75", "pairs")})
    print(
        f"{case}: MEAP {row['ours']:,.0f} ex/s, TRL {row['baseline']:,.0f} ex/s, paired ratio {row['ratio']:.3f} "
        f"(IQR {row['ratio_q25']:.3f}-{row['ratio_q75']:.3f}, {row['pairs']} pairs)"
    )
    return row


def run(smoke: bool, rounds: int) -> list[dict]:
    from hf_plugins import DataCollatorForMEAP

    torch.set_num_threads(1)  # a dataloader worker's view
    batch, length, vocab = (4, 64, 500) if smoke else (8, 2048, 49152)
    cases = [
        ("pretrain", "pretrain", {}),
        ("padding_free", "pretrain", {}),
        ("sft_separate_rows", "sft", {"sft_mode": "separate_rows"}),
        ("sft_concat", "sft", {"sft_mode": "concat"}),
    ]
    metric = "examples/s (CPU time, 1 thread); ratio: median [IQR] of paired per-batch ratios"
    rows = []
    for name, mode, kw in cases:
        base = _trl_collator(padding_free=name == "padding_free")
        data = _examples(name, batch, length, vocab, seed=0)
        meap = DataCollatorForMEAP(
            base=base, mode=mode, mask_token_id=vocab, special_token_ids=[0, 1, 2], seed=0, **kw
        )
        case = f"{name}, B={batch}, T<={length}, vs TRL collator on the same examples"
        rows.append(_row(case, metric, batch, _time_pair(base, meap, data, rounds)))
        if mode == "pretrain":
            # MEAP parses the examples' lists into int64 arrays (np.fromiter) before TRL's collator turns them into
            # tensors, as in SFT mode. These rows isolate MEAP's own cost: TRL given the same examples as arrays
            # (built outside the timing) while MEAP gets the lists (parsing + masking), and both given the arrays
            # (masking alone).
            arrays = [[{k: np.asarray(v) if k == "input_ids" else v for k, v in ex.items()} for ex in b] for b in data]
            for form, meap_rows in (("lists", data), ("arrays", arrays)):
                case = f"{name}, B={batch}, T<={length}, MEAP given {form} vs TRL given arrays of the same examples"
                rows.append(_row(case, metric, batch, _time_pair(base, meap, meap_rows, rounds, base_batches=arrays)))
        if mode == "sft":
            # SFT MEAP adds rows / doubles lengths by design; these rows isolate the collator's own overhead by
            # letting TRL collate the very rows MEAP produces (built once, outside the timing), given as Python
            # lists (as a dataset.map preparation would) and as the NumPy arrays MEAP hands to TRL.
            grown = [meap._sft_examples(rows_, 0.1, np.random.default_rng(i)) for i, rows_ in enumerate(data)]
            as_lists = [
                [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in ex.items()} for ex in b] for b in grown
            ]
            for form, base_rows in (("lists", as_lists), ("arrays", grown)):
                case = f"{name}, B={batch}, T<={length}, vs TRL collating MEAP's output rows ({form})"
                rows.append(_row(case, metric, batch, _time_pair(base, meap, data, rounds, base_batches=base_rows)))
    return rows


def _format(rows: list[dict]) -> list[str]:
    import transformers

    date = datetime.date.today().isoformat()
    versions = f"{torch.__version__} / {transformers.__version__}"
    return [
        f"| {date} | {SCRIPT} | CPU | {versions} | {r['case']} | {r['metric']} | {r['ours']:,.0f} | "
        f"{r['baseline']:,.0f} | {r['ratio']:.2f} [{r['ratio_q25']:.2f}, {r['ratio_q75']:.2f}] |"
        for r in rows
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes")
    p.add_argument("--append", action="store_true", help="append rows to benchmarks/RESULTS.md")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--rounds", type=int, default=None, help="passes over the 8 batches (default 40, smoke 5)")
    args = p.parse_args(argv)
    rows = run(args.smoke, args.rounds or (5 if args.smoke else 40))
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
