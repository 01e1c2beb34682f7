"""Stable-SPAM against an fp64 loop written from the paper's equations (docs/stable_spam.md), plus resume,
bf16 statistics, non-finite gradients, hyperparameter validation and FSDP2 (fused path: test_stable_spam_fused.py)."""

import io
import math
import re

import pytest
import torch

from hf_plugins import StableSPAM
from hf_plugins.optim.stable_spam import cosine_scale


SHAPES = [(16, 12), (40,), (7, 5, 3)]
HP = {
    "lr": 1e-2,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.1,
    "gamma1": 0.7,
    "gamma2": 0.9,
    "theta": 0.999,
    "total_T": 40,
    "eta_min": 0.5,
    "reset_interval": 25,
}


def make_params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in SHAPES]


def gradient_stream(n_steps, seed=1):
    """Random gradients with injected spikes (a few entries x50 every 7 steps, one whole tensor x20 at step 30),
    an all-zero gradient at step 12 and a missing gradient (None) for the second tensor every 11 steps."""
    g = torch.Generator().manual_seed(seed)
    stream = []
    for step in range(1, n_steps + 1):
        grads = [torch.randn(s, generator=g) * (0.5 + 0.1 * i) for i, s in enumerate(SHAPES)]
        if step % 7 == 0:
            flat = grads[0].view(-1)
            idx = torch.randint(0, flat.numel(), (5,), generator=g)
            flat[idx] *= 50.0
        if step == 30:
            grads[2] *= 20.0
        if step == 12:
            grads[0].zero_()
        if step % 11 == 0:
            grads[1] = None
        stream.append(grads)
    return stream


def reference_run(params0, stream, hp, adaclip=True, adagn=True):
    """The equations of docs/stable_spam.md, one parameter at a time, in float64."""
    beta1, beta2 = hp["betas"]
    params = [p.detach().double().clone() for p in params0]
    st = [
        {
            "t": 0,
            "s": 0,
            "m_max": 0.0,
            "m_norm": 0.0,
            "v_norm": 0.0,
            "m": torch.zeros_like(p),
            "v": torch.zeros_like(p),
        }
        for p in params
    ]
    T = 0
    history = []
    for grads in stream:
        T += 1
        scale = 1.0
        if hp["total_T"]:  # the official CosineAnnealingLR(T_max=total_T + 1) closed form at T, clamped after
            n = hp["total_T"] + 1
            scale = hp["eta_min"] + (1 - hp["eta_min"]) * (1 + math.cos(math.pi * min(T, n) / n)) / 2
        b1, g1 = beta1 * scale, hp["gamma1"] * scale
        for p, s, g in zip(params, st, grads):
            if g is None:
                continue
            g = g.double()
            p.mul_(1 - hp["lr"] * hp["weight_decay"])
            s["t"] += 1
            t = s["t"]
            if adaclip:
                gmax = g.abs().max().item()
                s["m_max"] = hp["theta"] * s["m_max"] + (1 - hp["theta"]) * gmax
                thr = s["m_max"] / (1 - hp["theta"] ** t)
                g = torch.where(g.abs() > thr, g / gmax * thr, g)
            if adagn:
                n = g.norm().item()
                s["m_norm"] = g1 * s["m_norm"] + (1 - g1) * n
                s["v_norm"] = hp["gamma2"] * s["v_norm"] + (1 - hp["gamma2"]) * n * n
                m_hat = s["m_norm"] / (1 - g1**t)
                v_hat = s["v_norm"] / (1 - hp["gamma2"] ** t)
                if n > 0:
                    g = g / n * m_hat / (math.sqrt(v_hat) + hp["eps"])
            if hp["reset_interval"] and T % hp["reset_interval"] == 0:
                s["m"].zero_()
                s["v"].zero_()
                s["s"] = 0
            s["s"] += 1
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = beta2 * s["v"] + (1 - beta2) * g * g
            bc1, bc2 = 1 - b1 ** s["s"], 1 - beta2 ** s["s"]
            p.sub_(hp["lr"] / bc1 * s["m"] / (s["v"].sqrt() / math.sqrt(bc2) + hp["eps"]))
        history.append([p.clone() for p in params])
    return history


def run_optimizer(params, stream, **kw):
    opt = StableSPAM(params, **kw)
    history = []
    for grads in stream:
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.to(p.dtype)
        opt.step()
        history.append([p.detach().double().clone() for p in params])
    return opt, history


@pytest.mark.parametrize(
    "foreach, ablation", [(True, "full"), (False, "full"), (True, "adagn_only"), (True, "adaclip_only")]
)
def test_matches_fp64_reference_over_60_steps_with_resets(foreach, ablation):
    """60 updates with spikes, a zero gradient, missing gradients, two moment resets (steps 25 and 50) and the
    cosine clamped after total_T=40: every parameter after every update equals the fp64 reference."""
    flags = {"full": (True, True), "adagn_only": (False, True), "adaclip_only": (True, False)}[ablation]
    stream = gradient_stream(60)
    ref = reference_run(make_params(), stream, HP, *flags)
    _, ours = run_optimizer(make_params(), stream, **HP, adaclip=flags[0], adagn=flags[1], foreach=foreach)
    for step, (a, b) in enumerate(zip(ours, ref), start=1):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-5, msg=lambda m, step=step: f"step {step}: {m}")


def test_foreach_equals_per_parameter_loop():
    stream = gradient_stream(40)
    _, a = run_optimizer(make_params(), stream, **HP, foreach=True)
    _, b = run_optimizer(make_params(), stream, **HP, foreach=False)
    for x, y in zip(a[-1], b[-1]):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)


def test_spikes_are_clipped_after_every_reset():
    """The official code resets the bias-correction step of AdaClip's max-EMA at each moment reset, which inflates
    the threshold and stops clipping for ~50-75 steps (docs, quirk 1). Here spikes 5 steps after each reset are
    clipped like any other (the official code clipped 0/8 at 25 and 50 steps after a reset)."""
    torch.manual_seed(0)
    p = torch.zeros(64, 64, requires_grad=True)
    opt = StableSPAM([p], lr=1e-3, reset_interval=30)
    clipped_after_reset = []
    for step in range(1, 150):
        g = torch.randn(64, 64)
        if step % 30 == 5:
            g.view(-1)[:8] = 50.0 * g.abs().max()
        p.grad = g
        opt.step()
        stats = opt.pop_stats()
        if step % 30 == 5:
            clipped_after_reset.append(stats["stable_spam/clipped_entries"])
    assert all(c >= 8 for c in clipped_after_reset), clipped_after_reset


def _save_load(opt):
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # what the HF Trainer does on resume


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_is_exact(dtype):
    """Save at step 23 (just before the reset at 25), resume in a fresh optimizer, run 20 more: bit-identical to an
    uninterrupted run, including the counters T, t, s and the fp32 statistics of bf16 parameters."""
    stream = gradient_stream(43)
    params_a = make_params(dtype)
    _, full = run_optimizer(params_a, stream, **HP)

    params_b = make_params(dtype)
    opt_b, _ = run_optimizer(params_b, stream[:23], **HP)
    saved = _save_load(opt_b)
    params_c = [p.detach().clone().requires_grad_() for p in params_b]
    opt_c = StableSPAM(params_c, **HP)
    opt_c.load_state_dict(saved)
    st = opt_c.state[params_c[0]]
    assert st["m_max"].dtype == st["v_norm"].dtype == torch.float32 and st["step"].dtype == torch.int64
    assert opt_c.param_groups[0]["T"] == 23
    history = []
    for grads in stream[23:]:
        for p, g in zip(params_c, grads):
            p.grad = None if g is None else g.to(dtype)
        opt_c.step()
        history.append([p.detach().double().clone() for p in params_c])
    for x, y in zip(history[-1], full[-1]):
        assert torch.equal(x, y)


def test_bf16_parameters_keep_fp32_statistics():
    """With gamma2 = 0.99999 and a constant ||g||^2 = 4, a bf16 EMA freezes (v_hat 1.57 at t=1000 in the official
    code); ours keeps v_hat = 4 because the statistics are fp32 whatever the parameter dtype."""
    p = torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)
    opt = StableSPAM([p], lr=1e-4, gamma2=0.99999, reset_interval=None)
    for _ in range(1000):
        p.grad = torch.ones(4, dtype=torch.bfloat16)  # ||g|| = 2
        opt.step()
    st = opt.state[p]
    assert st["v_norm"].dtype == st["m_norm"].dtype == st["m_max"].dtype == torch.float32
    assert st["exp_avg"].dtype == torch.bfloat16  # moments follow the parameter, like torch's AdamW
    v_hat = st["v_norm"].item() / (1 - 0.99999**1000)
    assert v_hat == pytest.approx(4.0, rel=1e-3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_skips_the_step(bad):
    params = make_params()
    stream = gradient_stream(6)
    opt, _ = run_optimizer(params, stream[:3], **HP)
    before = [p.detach().clone() for p in params]
    state_before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    grads = [g.clone() for g in stream[3]]
    grads[0].view(-1)[3] = bad
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert all(torch.equal(state_before[k], v) for k, v in opt.state[params[0]].items())
    assert opt.param_groups[0]["T"] == 3 and opt.param_groups[0]["skipped_steps"] == 1  # one CPU process: at once
    assert opt.pop_stats()["stable_spam/skipped_steps"] == 1.0

    opt_raise = StableSPAM(make_params(), nonfinite="raise")
    for p, g in zip(opt_raise.param_groups[0]["params"], grads):
        p.grad = g
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        opt_raise.step()


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("ablation", [(True, True), (False, True), (True, False)])
def test_device_side_skip_equals_the_host_check(monkeypatch, foreach, ablation):
    """The update that checks finiteness on the device (every write masked by the flag, the counters corrected at the
    next step; what data-parallel and GPU runs do) equals the host-checked one bit for bit: 30 steps with spikes,
    missing and zero gradients, a moment reset, a NaN and an inf step (one of them the reset step)."""
    import hf_plugins.optim.stable_spam as mod

    stream = gradient_stream(30)
    stream[9][0].view(-1)[2] = float("nan")
    stream[25][2].view(-1)[0] = float("inf")  # would be update 25, which resets the moments (reset_interval=25)
    hp = {**HP, "adaclip": ablation[0], "adagn": ablation[1], "foreach": foreach}
    opt_a, hist_a = run_optimizer(make_params(), stream, **hp)
    monkeypatch.setattr(mod, "is_distributed", lambda: True)  # CPU work then defers its check, as under DDP
    opt_b, hist_b = run_optimizer(make_params(), stream, **hp)
    assert opt_b._pending is not None  # the last step's flag, read at the next step / state_dict / pop_stats
    for step, (a, b) in enumerate(zip(hist_a, hist_b)):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), step
    stats_a, stats_b = opt_a.pop_stats(), opt_b.pop_stats()
    assert stats_a == stats_b and stats_b["stable_spam/skipped_steps"] == 2.0
    for pa, pb in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
        for key, value in opt_a.state[pa].items():
            assert torch.equal(value, opt_b.state[pb][key]), key
    assert opt_a.param_groups[0]["T"] == opt_b.param_groups[0]["T"] == 28


def test_stats_report_clipping_and_norm_scale():
    """`pop_stats` counts exactly the entries above the threshold: at t=1 the threshold is max|g| itself, so nothing
    clips; at t=2 with one entry x100, exactly that entry is above the bias-corrected EMA of the max."""
    p = torch.zeros(10, 10, requires_grad=True)
    opt = StableSPAM([p])
    p.grad = torch.linspace(-1, 1, 100).view(10, 10)
    opt.step()
    s1 = opt.pop_stats()
    assert s1["stable_spam/clipped_entries"] == 0
    # AdaGN at t=1: m_hat = n, v_hat = n^2, factor m_hat / ((sqrt(v_hat) + eps) * n) = 1 / (n + eps)
    n = torch.linspace(-1, 1, 100).double().norm().item()
    assert s1["stable_spam/norm_scale_mean"] == pytest.approx(1.0 / (n + 1e-8), rel=1e-6)
    g = torch.linspace(-1, 1, 100).view(10, 10).clone()
    g[0, 0] = 100.0
    p.grad = g
    opt.step()
    assert opt.pop_stats()["stable_spam/clipped_entries"] == 1


def test_cosine_scale_follows_the_official_schedule_and_is_clamped():
    """The official code takes the factor from torch's CosineAnnealingLR with T_max = total_T + 1 (base value 1) at
    the T-th update: the same phase here (no one-update offset) up to T = total_T + 1, where it reaches eta_min; after
    that ours stays at eta_min while the official schedule is periodic (back at 1 at T = 2 (total_T + 1))."""
    total_T, eta_min = 10, 0.5
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(dummy, T_max=total_T + 1, eta_min=eta_min)
    for T in range(1, total_T + 2):
        dummy.step()
        sched.step()
        assert cosine_scale(T, total_T, eta_min) == pytest.approx(dummy.param_groups[0]["lr"], abs=1e-12), T
    assert cosine_scale(total_T + 1, total_T, eta_min) == eta_min
    assert cosine_scale(2 * (total_T + 1), total_T, eta_min) == eta_min  # the official factor is back at 1 here
    assert cosine_scale(7, None, 0.5) == 1.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"gamma1": 1.2}, "gamma1"),
        ({"gamma2": -0.1}, "gamma2"),
        ({"theta": 1.0}, "theta"),
        ({"total_T": 0}, "total_T"),
        ({"eta_min": 2.0}, "eta_min"),
        ({"reset_interval": -5}, "reset_interval"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"nonfinite": "ignore"}, "nonfinite"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        StableSPAM(make_params(), **kwargs)


@pytest.mark.parametrize(
    "group, field, value",
    [
        ({"betas": (1.5, 0.9)}, "betas", "(1.5, 0.9)"),
        ({"gamma1": 2}, "gamma1", "2"),
        ({"lr": -1}, "lr", "-1"),
        ({"lr": float("inf")}, "lr", "inf"),
        ({"eps": float("nan")}, "eps", "nan"),
        ({"reset_interval": 2.5}, "reset_interval", "2.5"),
        ({"total_T": 0}, "total_T", "0"),
        ({"adaclip": "yes"}, "adaclip", "'yes'"),
    ],
)
def test_bad_per_group_hyperparameters_raise_naming_field_and_group(group, field, value):
    """Values given per parameter group are checked like the constructor's: a clear ValueError naming the group,
    the field and the value (they were accepted before, and lr=inf made every parameter non-finite after a step)."""
    params = make_params()
    groups = [{"params": params[:1]}, {"params": params[1:], **group}]
    with pytest.raises(ValueError, match=rf"param group 1: `{field}` must be .*got {re.escape(value)}"):
        StableSPAM(groups)
    with pytest.raises(ValueError, match=f"`{field}`"):
        StableSPAM(params, **{"lr": 1e-3, **group})  # the same value as a constructor argument


def test_add_param_group_and_scheduled_lr_are_checked():
    params = make_params()
    opt = StableSPAM(params[:2])
    with pytest.raises(ValueError, match=r"param group 1: `gamma2` must be a number in \[0, 1\), got 5"):
        opt.add_param_group({"params": params[2:], "gamma2": 5})
    assert len(opt.param_groups) == 1  # the bad group was not added
    opt.add_param_group({"params": params[2:], "gamma2": 0.5, "reset_interval": None})
    assert opt.param_groups[1]["gamma2"] == 0.5 and opt.param_groups[1]["reset_interval"] == 0
    # a learning rate set between steps (a scheduler, a user) is checked before anything is written
    for p in params:
        p.grad = torch.ones_like(p)
    opt.param_groups[1]["lr"] = float("inf")
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r"param group 1: `lr` must be a finite number >= 0, got inf"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def _fsdp2_worker(rank: int, port: int, out_dir: str) -> None:
    """One of 2 gloo ranks: a plain model and an FSDP2 copy (`fully_shard`) trained side by side on the same batches;
    rank 0 saves both final states for the parent to compare."""
    import os

    import torch.distributed as dist
    from torch import nn
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.distributed.fsdp import fully_shard

    from hf_plugins.distributed import full_tensor, is_dtensor, local_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out = {}
        for foreach in (None, False):

            def make():
                torch.manual_seed(0)  # 7 rows: shards of 4 and 3; the 1-row weight and bias: rank 1's shard is empty
                return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 1))

            ref, shd = make(), make()
            fully_shard(shd)
            hp = {**HP, "theta": 0.5, "total_T": 6, "reset_interval": 4, "foreach": foreach}
            o_ref, o_shd = StableSPAM(ref.parameters(), **hp), StableSPAM(shd.parameters(), **hp)
            for step in range(7):
                g = torch.Generator().manual_seed(step)
                x = torch.randn(8, 6, generator=g) * (30.0 if step == 3 else 1.0)  # a spike: AdaClip clips
                y = torch.randn(8, 1, generator=g)
                for model, opt in ((ref, o_ref), (shd, o_shd)):
                    ((model(x) - y) ** 2).mean().backward()  # same full batch on both ranks: FSDP2's mean = it
                    if step == 5 and model is shd and rank == 1:  # a NaN in rank 1's shard only: all ranks skip
                        local_tensor(model[0].weight.grad)[0, 0] = float("nan")
                    if step == 5 and model is ref:
                        model[0].weight.grad[4, 0] = float("nan")  # the same entry of the whole matrix
                    opt.step()
                    opt.zero_grad()
            assert all(is_dtensor(o_shd.state[p]["exp_avg"]) for p in shd.parameters())  # sharded checkpoints
            osd = get_optimizer_state_dict(shd, o_shd, options=StateDictOptions(full_state_dict=True))
            names = [n for n, _ in ref.named_parameters()]
            tag = f"foreach={foreach}"
            out[tag] = {
                "stats": (o_ref.pop_stats(), o_shd.pop_stats()),
                "weights": [(p.detach(), full_tensor(q.detach())) for p, q in zip(ref.parameters(), shd.parameters())],
                "state": [(o_ref.state[p], osd["state"][n]) for p, n in zip(ref.parameters(), names)],
            }
        if rank == 0:
            torch.save(out, os.path.join(out_dir, "out.pt"))
    finally:
        dist.destroy_process_group()


def test_fsdp2_sharded_parameters_match_one_process(tmp_path):
    """Under FSDP2 (2 gloo processes, `fully_shard`, uneven and empty shards) every per-matrix statistic is of the
    whole matrix: weights, moments, AdaClip/AdaGN statistics, the clipped count and a NaN in one rank's shard (the
    step is skipped on every rank) equal one process on the same gradients; the state stays sharded (DTensor) and
    gathers to the single-process state."""
    import os
    import sys

    import torch.multiprocessing as mp

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from _dist_launch import free_port

    mp.start_processes(_fsdp2_worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    for tag, res in out.items():
        s_ref, s_shd = res["stats"]
        assert s_ref["stable_spam/clipped_entries"] > 0 and s_ref["stable_spam/skipped_steps"] == 1, tag
        assert s_ref.keys() == s_shd.keys(), tag
        for key in s_ref:
            assert math.isclose(s_ref[key], s_shd[key], rel_tol=1e-5, abs_tol=1e-7), (tag, key, s_ref[key], s_shd[key])
        for a, b in res["weights"]:
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=tag)
        for st_ref, st_shd in res["state"]:
            for key in ("exp_avg", "exp_avg_sq", "m_max", "m_norm", "v_norm", "step", "moment_step"):
                torch.testing.assert_close(st_shd[key], st_ref[key], atol=1e-6, rtol=1e-5, msg=f"{tag} {key}")
