"""Per-step communication account of every plugin and stock baseline under DDP and FSDP2 (2 CPU processes, gloo):
collectives, bytes moved and host synchronisations of a steady training step, of a SEFT grow-window step and of a
refresh / cycle / topology-update step, counted by `_comm_count.StepCounter` around each step of `_dist_harness.run`
(forward, backward, optimizer step and the plugin's per-step hooks). Also the single-process step's host syncs.

    python benchmarks/comm_account.py            # print the table
    python benchmarks/comm_account.py --write    # write it into docs/distributed.md (between the markers)
    python benchmarks/comm_account.py --check    # exit 1 if docs/distributed.md holds another table

`tests/test_comm_account.py` pins the counts (`BOUNDS`) and checks that the docs table is current.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


HERE = Path(__file__).resolve().parent
for _path in (HERE, HERE.parent):  # the harness beside this file; the repository's hf_plugins before an installed one
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _dist_harness import BASELINE_OF, CASES, RunConfig, run  # noqa: E402


DOCS = HERE.parent / "docs" / "distributed.md"
BEGIN, END = "<!-- comm-account:begin -->", "<!-- comm-account:end -->"
STEPS, INTERVAL = 10, 4  # kinds from steps >= 2 (step 1 of DDP rebuilds its buckets): steady, window, refresh
MODES = ("ddp", "fsdp2")
KINDS = ("steady", "window", "refresh")

# Per (case, mode, step kind): the most collectives our code may issue itself in that step. Any other kind of step,
# and every steady step not listed: 0. Host syncs of our code in a steady step: always 0.
# Stable-SPAM / AlphaDecay(StableSPAM) under FSDP2: one MAX all-reduce of every tensor's max|g| (AdaClip needs it
# before clipping), one SUM all-reduce of the clipped gradients' squared norms and clip counts (AdaGN needs them
# after clipping): two data-dependent rounds, bucketed over every tensor and group.
STEADY_BOUNDS = {("stable_spam", "fsdp2"): 2}
WINDOW_BOUNDS = {("seft", "ddp"): 1, ("seft", "fsdp2"): 1}  # the grow scores' all-reduce, one bucket per step
# One process on the CPU: Stable-SPAM reads its finiteness flag at once (nothing to wait for on the CPU, and the
# update then needs no masking); on a GPU, and on the CPU under DDP / FSDP2, the check stays on the device.
HOST_CHECK_IN_ONE_CPU_PROCESS = ("stable_spam",)


def account_job(cfg: RunConfig) -> tuple[dict, None]:
    """Run `cfg` with a `StepCounter` around each step; per step its `StepRecord.summary()` and kind."""
    from _comm_count import StepCounter

    records = []

    def account(step):
        counter = StepCounter()
        records.append(counter)
        return counter

    res = run(cfg, account=account)
    return {"kinds": res["step_kinds"], "steps": [c.record.summary() for c in records]}, None


def collect(world: int = 2, timeout: float = 600.0, cases: tuple[str, ...] = CASES) -> dict:
    """`{(case, mode): {kind: summary}}` for every case under DDP and FSDP2 (`world` forked gloo processes) and in
    one process (mode "single"). A kind's summary is the elementwise maximum over its steps >= 2."""
    from _dist_launch import launch

    cfgs = [RunConfig(c, mode=m, steps=STEPS, interval=INTERVAL, return_state=False) for m in MODES for c in cases]
    with tempfile.TemporaryDirectory() as tmp:
        results = launch(cfgs, tmp, world=world, timeout=timeout, job=account_job)
    out = {}
    for cfg, res in zip(cfgs, results):
        if not res["ok"]:
            raise RuntimeError(f"{cfg.plugin} under {cfg.mode} failed:\n{res['error']}")
        out[(cfg.plugin, cfg.mode)] = by_kind(res["kinds"], res["steps"])
    for case in cases:
        single = RunConfig(case, mode="single", steps=STEPS, interval=INTERVAL, return_state=False)
        meta, _ = account_job(single)
        out[(case, "single")] = by_kind(meta["kinds"], meta["steps"])
    return out


def by_kind(kinds: list[str], steps: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for i, (kind, s) in enumerate(zip(kinds, steps)):
        if i < 2:
            continue
        prev = out.get(kind)
        if prev is None:
            out[kind] = dict(s)
            continue
        for key, value in s.items():
            if isinstance(value, int):
                prev[key] = max(prev[key], value)
            elif isinstance(value, list):
                prev[key] = sorted(set(prev[key]) | set(value))
            else:
                prev[key] = {k: max(prev[key].get(k, 0), value.get(k, 0)) for k in prev[key].keys() | value.keys()}
    return out


def _bytes(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def table(account: dict) -> list[str]:
    """The markdown table: per case and mode, each step kind's collectives and bytes (in total, of which issued by
    our code) and our host syncs, beside the host syncs of our code in the same step in one process."""
    lines = [
        "| case (baseline) | mode | step | collectives: all (ours) | bytes: all (ours) | host syncs: ours | ours, 1 process |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        label = f"{case} ({BASELINE_OF[case]})" if case in BASELINE_OF else case
        for mode in MODES:
            kinds = account[(case, mode)]
            single = account[(case, "single")]
            for kind in KINDS:
                if kind not in kinds:
                    continue
                s, one = kinds[kind], single.get(kind, {})
                lines.append(
                    f"| {label} | {mode} | {kind} | {s['collectives']} ({s['plugin_collectives']}) | "
                    f"{_bytes(s['bytes'])} ({_bytes(s['plugin_bytes'])}) | {s['plugin_syncs']} | "
                    f"{one.get('plugin_syncs', '-')} |"
                )
    return lines


# Plugins that train the very model of their baseline: their steps may hold no more collectives than the baseline's
# steady step plus their bound. CoE and NeuroTrails have other blocks than a plain Llama (more FSDP2 units: more
# all-gathers and reduce-scatters issued by FSDP2 itself), so only our own collectives are bounded for them.
SAME_MODEL = ("lift", "seft", "stable_spam", "alphadecay", "meap")


def violations(account: dict) -> list[str]:
    """What breaks the pinned bounds in a steady (or window) step: collectives of ours above the bound, any host sync
    of ours, or more collectives in all than the stock baseline's steady step plus the bound."""
    bad = []
    for case in CASES:
        for mode in (*MODES, "single"):
            kinds = account[(case, mode)]
            for kind, bounds in (("steady", STEADY_BOUNDS), ("window", WINDOW_BOUNDS)):
                s = kinds.get(kind)
                if s is None:
                    continue
                limit = bounds.get((case, mode), 0)
                if s["plugin_collectives"] > limit:
                    bad.append(f"{case} {mode} {kind}: {s['plugin_collectives']} collectives of ours > {limit}")
                if s["plugin_syncs"] and not (mode == "single" and case in HOST_CHECK_IN_ONE_CPU_PROCESS):
                    bad.append(f"{case} {mode} {kind}: host syncs of ours at {s['plugin_sync_sites']}")
                base = BASELINE_OF.get(case)
                if base and mode != "single" and (case in SAME_MODEL or mode == "ddp"):
                    ref = account[(base, mode)]["steady"]["collectives"]
                    if s["collectives"] > ref + limit:
                        bad.append(f"{case} {mode} {kind}: {s['collectives']} collectives > {base}'s {ref} + {limit}")
    return bad


def docs_block(lines: list[str]) -> str:
    return "\n".join([BEGIN, *lines, END])


def current_docs_block(path: Path = DOCS) -> str | None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return None
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="write the table into docs/distributed.md")
    p.add_argument("--check", action="store_true", help="exit 1 if docs/distributed.md holds another table")
    p.add_argument("--cases", help="comma-separated subset (prints the raw account; no table)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.cases:
        for key, kinds in collect(cases=tuple(args.cases.split(","))).items():
            for kind, summary in kinds.items():
                print(*key, kind, summary)
        return 0
    account = collect()
    lines = table(account)
    print("\n".join(lines))
    for line in violations(account):
        print("BOUND:", line, file=sys.stderr)
    block = docs_block(lines)
    if args.write:
        current = current_docs_block()
        if current is None:
            print(f"{DOCS} has no {BEGIN} ... {END} markers", file=sys.stderr)
            return 1
        DOCS.write_text(DOCS.read_text().replace(current, block))
    if args.check and current_docs_block() != block:
        print(f"{DOCS} holds another table: run benchmarks/comm_account.py --write", file=sys.stderr)
        return 1
    return 1 if violations(account) else 0


if __name__ == "__main__":
    sys.exit(main())
