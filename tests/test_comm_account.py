"""The per-step communication account (`benchmarks/comm_account.py`): every plugin and stock baseline under DDP and
FSDP2 in 2 CPU processes (gloo). Pins what a steady step may communicate (no collective and no host sync of ours
beyond the bounds in `comm_account.STEADY_BOUNDS` / `WINDOW_BOUNDS`, no more collectives than the stock baseline's
step plus that bound) and checks that the table in docs/distributed.md is the one the account gives now."""

import os
import sys

import pytest
import torch


BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
import comm_account  # noqa: E402
from _comm_count import StepCounter  # noqa: E402


@pytest.fixture(scope="module")
def account():
    return comm_account.collect()


def test_steady_steps_stay_within_the_pinned_bounds(account):
    """Steady steps (and SEFT's grow-window steps) of every plugin, in 1 and 2 processes: no host sync of our code,
    our collectives within the bound (0; Stable-SPAM under FSDP2: its two bucketed statistics reductions; SEFT's
    window: one bucketed all-reduce of the candidates' gradients), and no more collectives in all than the baseline."""
    assert comm_account.violations(account) == []
    spam = account[("stable_spam", "fsdp2")]["steady"]
    assert spam["plugin_collectives"] == 2 and spam["ops"].get("allreduce_", 0) == 2
    # the account sees what it should: FSDP2's own all-gathers / reduce-scatters, refresh-step gathers of ours
    assert account[("adamw", "fsdp2")]["steady"]["ops"].keys() >= {"_allgather_base_", "_reduce_scatter_base_"}
    assert account[("lift", "fsdp2")]["refresh"]["plugin_collectives"] > 0
    assert account[("seft", "ddp")]["window"]["plugin_collectives"] == 1


def test_docs_table_is_current(account):
    """docs/distributed.md holds the table this account gives (regenerate: benchmarks/comm_account.py --write)."""
    block = comm_account.docs_block(comm_account.table(account))
    assert comm_account.current_docs_block() == block, "run: python benchmarks/comm_account.py --write"


def test_counter_sees_host_syncs():
    """What synchronises with the device is counted, what does not is not."""
    x = torch.arange(6.0)
    with StepCounter() as rec:
        _ = x * 2 + 1  # device work only
        _ = torch.topk(x, 2).indices
    assert rec.syncs == []
    with StepCounter() as rec:
        x.sum().item()
        bool(x.max() > 0)
        x.tolist()
        _ = x[x > 2]
        torch.nonzero(x)
    kinds = [k for k, _, _ in rec.syncs]
    assert kinds.count("item") == 2 and "tolist" in kinds and "boolean index" in kinds and "nonzero" in kinds
    assert all(origin == "stack" for _, origin, _ in rec.syncs)  # issued from here, not from hf_plugins
    assert x.tolist is not None and torch.Tensor.tolist.__name__ == "tolist"  # patches undone
