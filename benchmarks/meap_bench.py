"""MEAP collator throughput (examples/s on the CPU) vs TRL's own collator on the same batches.

The collator runs in the dataloader on the CPU, so this benchmark is CPU-only by design. Each case collates the
same list of examples with TRL's `DataCollatorForLanguageModeling` (the stock alternative) and with
`DataCollatorForMEAP` wrapping that collator. Measurement (robust to other jobs on a shared machine):

- one thread everywhere (`torch.set_num_threads(1)`, BLAS / OpenMP pools set to 1 before NumPy is imported), and
  process CPU time (`time.process_time`), i.e. work done, not wall time; the garbage collector is off while timing;
- warm-up: every batch goes through both collators twice before timing;
- a repeat is 10 passes over 8 batches; in each pass every batch is collated once by each collator, back to
  back, the order alternating, and each pair gives one ratio t(TRL) / t(MEAP); the repeat's ratio is the median of
  its paired ratios and its examples/s are batch size / median time of each collator.

Cases: pre-training mode (MEAP + TRL vs TRL alone on the example lists), and MEAP's masking alone (both given the
examples as arrays); `--all-cases` adds padding-free, the two SFT modes, and MEAP given lists vs TRL given arrays.

    python benchmarks/meap_bench.py --append                 # B=8, up to 2048 tokens, ~20 s
    python benchmarks/meap_bench.py --smoke                  # tiny sizes
"""

from __future__ import annotations

import os


for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before NumPy / torch load their thread pools

import gc  # noqa: E402
import itertools  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import _results  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


SCRIPT = "meap_bench.py"
METRIC = "examples/s (CPU time, 1 thread); ratio: median of paired per-batch ratios per repeat"


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
                ex["seq_lengths"] = [b - a for a, b in itertools.pairwise([0, *cut, n]) if b > a]
            if kind.startswith("sft"):
                prompt = int(torch.randint(n // 4, n // 2, (1,), generator=g))
                ex["labels"] = [-100] * prompt + ids[prompt:]
            rows.append(ex)
        out.append(rows)
    return out


def _time_pair(base, meap, batches, rounds: int, repeats: int, base_batches=None) -> dict:
    """Per repeat: median CPU seconds of `base(base_batches[i])` and `meap(batches[i])`, and the median of the paired
    ratios t(base) / t(meap), one pair per batch and pass, the order alternating."""
    base_batches = batches if base_batches is None else base_batches
    for _ in range(2):  # warm-up: caches, lazy imports, the generator's first seeding
        for rows, base_rows in zip(batches, base_batches):
            base(base_rows), meap(rows)
    out = {"t_base": [], "t_meap": [], "ratio": []}
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            t_base, t_meap, ratios = [], [], []
            for r in range(rounds):
                for i, (rows, base_rows) in enumerate(zip(batches, base_batches)):
                    calls = [(base, base_rows), (meap, rows)]
                    if (r + i) % 2:
                        calls.reverse()
                    times = {}
                    for fn, arg in calls:
                        t0 = time.process_time()
                        fn(arg)
                        times[fn is meap] = time.process_time() - t0
                    if times[False] > 0 and times[True] > 0:
                        t_base.append(times[False])
                        t_meap.append(times[True])
                        ratios.append(times[False] / times[True])
            out["t_base"].append(statistics.median(t_base))
            out["t_meap"].append(statistics.median(t_meap))
            out["ratio"].append(statistics.median(ratios))
    finally:
        gc.enable()
    return out


def _row(case: str, batch: int, timing: dict) -> dict:
    r = _results.row(case, METRIC, [batch / t for t in timing["t_meap"]], [batch / t for t in timing["t_base"]])
    r["ratio"] = _results.spread(timing["ratio"])  # the paired ratio, not the ratio of the two medians
    print(f"{case}: MEAP {_results.fmt(r['ours'])} ex/s, TRL {_results.fmt(r['baseline'])} ex/s, paired ratio {_results.fmt(r['ratio'])}")  # fmt: skip
    return r


def run(smoke: bool, rounds: int, repeats: int, all_cases: bool) -> list[dict]:
    from hf_plugins import DataCollatorForMEAP

    torch.set_num_threads(1)  # a dataloader worker's view
    batch, length, vocab = (4, 64, 500) if smoke else (8, 2048, 49152)
    cases = [("pretrain", "pretrain", {})]
    if all_cases:
        cases += [
            ("padding_free", "pretrain", {}),
            ("sft_separate_rows", "sft", {"sft_mode": "separate_rows"}),
            ("sft_concat", "sft", {"sft_mode": "concat"}),
        ]
    rows = []
    for name, mode, kw in cases:
        base = _trl_collator(padding_free=name == "padding_free")
        data = _examples(name, batch, length, vocab, seed=0)
        meap = DataCollatorForMEAP(
            base=base, mode=mode, mask_token_id=vocab, special_token_ids=[0, 1, 2], seed=0, **kw
        )
        prefix = f"{name}, B={batch}, T<={length}"
        rows.append(_row(f"{prefix}, vs TRL collator on the same examples, {repeats} repeats", batch, _time_pair(base, meap, data, rounds, repeats)))  # fmt: skip
        if mode == "pretrain":
            # MEAP parses the example lists into int64 arrays (np.fromiter) before TRL's collator makes tensors.
            # These rows isolate MEAP's own cost: TRL given the examples as arrays (built outside the timing)
            # while MEAP gets the lists (parsing + masking), and both given the arrays (masking alone).
            arrays = [[{k: np.asarray(v) if k == "input_ids" else v for k, v in ex.items()} for ex in b] for b in data]
            forms = (("lists", data), ("arrays", arrays)) if all_cases else (("arrays", arrays),)
            for form, meap_rows in forms:
                case = f"{prefix}, MEAP given {form} vs TRL given arrays of the same examples, {repeats} repeats"
                rows.append(_row(case, batch, _time_pair(base, meap, meap_rows, rounds, repeats, base_batches=arrays)))
        if mode == "sft":
            # SFT MEAP adds rows / doubles lengths by design; these rows isolate the collator's own overhead by
            # letting TRL collate the very rows MEAP produces (built once, outside the timing), as Python lists
            # (as a dataset.map preparation would) and as the NumPy arrays MEAP hands to TRL.
            grown = [meap._sft_examples(rows_, 0.1, np.random.default_rng(i)) for i, rows_ in enumerate(data)]
            as_lists = [[{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in ex.items()} for ex in b] for b in grown]  # fmt: skip
            for form, base_rows in (("lists", as_lists), ("arrays", grown)):
                case = f"{prefix}, vs TRL collating MEAP's output rows ({form}), {repeats} repeats"
                rows.append(_row(case, batch, _time_pair(base, meap, data, rounds, repeats, base_batches=base_rows)))
    return rows


def main(argv=None) -> int:
    p = _results.parser(__doc__)
    p.add_argument("--all-cases", action="store_true", help="also padding-free, both SFT modes and the list inputs")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = run(args.smoke, 2 if args.smoke else 10, args.repeats, args.all_cases)
    device = f"{_results.device_label(torch.device('cpu'), args.smoke)}, 1 thread"
    _results.report(rows, {}, SCRIPT, device, time.perf_counter() - t0, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
