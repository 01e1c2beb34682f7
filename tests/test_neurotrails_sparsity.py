"""NeuroTrails dynamic sparse training: ERK densities, exact counts, prune/regrow rules, optimizer state, the
Trainer callback, resume and the CLI."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

import hf_plugins  # noqa: F401
from hf_plugins.models.neurotrails import (
    NeuroTrailsConfig,
    NeuroTrailsSparsityCallback,
    erk_densities,
    prune_rate_at,
    sparse_layer_shapes,
)
from hf_plugins.models.neurotrails_sparsity import update_layer_topology, zero_optimizer_state


TINY = {
    "vocab_size": 61,  # 32000
    "hidden_size": 32,  # 768
    "intermediate_size": 48,  # 2048
    "num_hidden_layers": 3,  # 12
    "num_attention_heads": 4,  # 12
    "num_key_value_heads": 2,  # 12
    "blocks_in_head": 2,  # 8
    "num_trails": 3,  # 3
    "max_position_embeddings": 64,  # 1024
    "pad_token_id": 0,
    "density": 0.5,  # 0.9: lower, so that ERK leaves every tiny layer sparse
}


def tiny_neurotrails(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(NeuroTrailsConfig(**{**TINY, **overrides}))


# ---- ERK ----


def test_erk_reproduces_the_official_formula_parameter_counts():
    """Counts computed by hand from the official ERK formula (`sparselearning/core.py`): LLaMA-130M with 3 trails x 8 blocks at density 0.9 has
    296.5M 2-D parameters, 266.8M non-zero; embeddings / lm_heads ~0.73 dense, attention 1.0, MLP ~0.98;
    LLaMA-350M with 3 x 16: 836.6M / 753M."""
    shapes = sparse_layer_shapes(NeuroTrailsConfig())
    dens = erk_densities(shapes, 0.9)
    total = sum(math.prod(s) for s in shapes.values())
    nonzero = sum(dens[k] * math.prod(s) for k, s in shapes.items())
    assert (round(total / 1e6, 1), round(nonzero / 1e6, 1)) == (296.5, 266.8)
    assert dens["model.embed_tokens"] == pytest.approx(0.728, abs=1e-3) == dens["lm_heads.2"]
    assert dens["model.trails.1.layers.3.self_attn.q_proj"] == 1.0
    assert dens["model.layers.0.mlp.down_proj"] == pytest.approx(0.978, abs=1e-3)
    big = NeuroTrailsConfig(
        hidden_size=1024, intermediate_size=2736, num_attention_heads=16, num_hidden_layers=24, blocks_in_head=16
    )
    shapes = sparse_layer_shapes(big)
    dens = erk_densities(shapes, 0.9)
    assert round(sum(math.prod(s) for s in shapes.values()) / 1e6, 1) == 836.6
    assert round(sum(dens[k] * math.prod(s) for k, s in shapes.items()) / 1e6) == 753


def test_erk_hand_derived_case():
    """Two layers (4x4: raw 8/16 = 0.5) and (2x8: raw 10/16 = 0.625) at overall density 0.5:
    eps * (0.5*16 + 0.625*16) = 16 -> eps = 8/9; densities 4/9 and 5/9. At 0.9 the second would exceed 1
    (eps = 28.8/18 = 1.6, 1.6*0.625 = 1.0 exactly, not above) and at 0.95 it is made dense, the first gets 14.4/16."""
    shapes = {"a": (4, 4), "b": (2, 8)}
    assert erk_densities(shapes, 0.5) == pytest.approx({"a": 4 / 9, "b": 5 / 9})
    assert erk_densities(shapes, 0.95) == pytest.approx({"a": (0.95 * 32 - 16) / 16, "b": 1.0})


def test_exact_density_per_layer_after_init():
    model = tiny_neurotrails()
    shapes = sparse_layer_shapes(model.config)
    dens = erk_densities(shapes, 0.5)
    modules = dict(model.sparse_modules())
    assert set(modules) == {k for k in shapes if round(dens[k] * math.prod(shapes[k])) < math.prod(shapes[k])}
    assert "lm_heads.0" in modules and "model.embed_tokens" in modules
    for name, module in modules.items():
        assert int(module.weight_mask.sum()) == round(dens[name] * module.weight.numel()) == module.nt_num_active
        assert (module.weight[~module.weight_mask] == 0).all(), name
        assert (module.weight[module.weight_mask] != 0).float().mean() > 0.9, name  # initialised, not zeroed
    assert not any(b.dtype != torch.bool for n, b in model.named_buffers() if n.endswith("weight_mask"))


def test_options_for_dense_embeddings_heads_and_dense_treenet():
    model = tiny_neurotrails(sparse_embeddings=False, sparse_lm_heads=False)
    names = {n for n, _ in model.sparse_modules()}
    assert "model.embed_tokens" not in names and not any(n.startswith("lm_heads") for n in names) and names
    dense = tiny_neurotrails(density=1.0)
    assert dense.sparse_modules() == [] and not any("mask" in n for n in dense.state_dict())
    assert dense.sparsity_step(None, step=49, total_steps=100) is None


def test_embedding_init_std():
    model = tiny_neurotrails(density=1.0, embedding_init_std=0.632, vocab_size=4000, hidden_size=64)
    assert model.model.embed_tokens.weight[1:].std().item() == pytest.approx(0.632, rel=0.02)
    assert model.lm_heads[0].weight.std().item() == pytest.approx(0.02, rel=0.05)


# ---- schedule and update rules ----


def test_prune_rate_closed_form_matches_cosine_annealing_lr():
    """The official code steps a CosineAnnealingLR(T_max=total, eta_min=0.005) once per optimizer step."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40, eta_min=0.005)
    for t in range(1, 41):
        opt.step()
        sched.step()
        assert prune_rate_at(t, 40, 0.5, 0.005) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)


def _layer(n: int = 40, seed: int = 0, num_active: int = 24):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, generator=g).view(4, n // 4).requires_grad_(True)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:num_active]] = True
    mask = mask.view(4, n // 4)
    with torch.no_grad():
        weight.mul_(mask)
    weight.grad = torch.randn(weight.shape, generator=g)
    return weight, mask


def test_magnitude_prune_and_gradient_growth_follow_the_rules():
    """Magnitude: the kept weights are the largest |w| among active ones; growth: the new positions are the
    top-|grad| among the positions not kept (candidates include the just-pruned ones). Explicit sort reference."""
    weight, mask = _layer()
    before_w, before_m = weight.detach().clone().view(-1), mask.clone().view(-1)
    grad = weight.grad.view(-1).clone()
    newly = update_layer_topology(weight, mask, 24, 0.25, criterion="magnitude", growth="gradient")
    active = [i for i in range(40) if before_m[i]]
    kept = set(sorted(active, key=lambda i: -abs(float(before_w[i])))[: math.ceil(24 * 0.75)])
    others = [i for i in range(40) if i not in kept]
    grown = set(sorted(others, key=lambda i: -abs(float(grad[i])))[: 24 - len(kept)])
    assert set(mask.view(-1).nonzero().view(-1).tolist()) == kept | grown
    assert int(mask.sum()) == 24
    assert set(newly.nonzero().view(-1).tolist()) == {i for i in grown if not before_m[i]}
    # pruned weights are zero, kept weights and pruned-then-regrown weights keep their values
    w = weight.detach().view(-1)
    for i in range(40):
        assert float(w[i]) == (float(before_w[i]) if mask.view(-1)[i] else 0.0)


def _soft_keep(w0: torch.Tensor, n_keep: int, generator) -> list[int]:
    """Run one soft-magnitude update on a layer [w0 (active) | 5 inactive] whose inactive positions carry large
    gradients, so that growth takes only inactive positions; return the active positions that were kept."""
    n = len(w0)
    weight = torch.cat([w0, torch.zeros(5)]).view(2, -1)
    mask = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(5, dtype=torch.bool)]).view(2, -1)
    weight.grad = torch.cat([torch.zeros(n), torch.full((5,), 9.0)]).view(2, -1)
    update_layer_topology(
        weight, mask, n, 1 - n_keep / n, criterion="soft_magnitude", temperature=3.0, generator=generator
    )
    return [i for i in range(n) if mask.view(-1)[i]]


def test_soft_magnitude_samples_without_replacement_proportional_to_abs_w_power_t():
    """Gumbel-top-k over T*log|w| equals sequential sampling without replacement with probability ~ |w|^T (T = 3).
    Reference: the sequential formula, P({i, j}) = p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j), on 3000 draws."""
    w0 = torch.tensor([0.5, 1.0, 1.5, 2.0, -1.2])
    p = w0.abs() ** 3 / (w0.abs() ** 3).sum()
    g = torch.Generator().manual_seed(0)
    singles, pairs = torch.zeros(5), torch.zeros(5, 5)
    n = 3000
    for _ in range(n):
        (i,) = _soft_keep(w0, 1, g)
        singles[i] += 1
        i, j = _soft_keep(w0, 2, g)
        pairs[i, j] += 1
    assert torch.allclose(singles / n, p, atol=0.025), (singles / n, p)
    expected = torch.zeros(5, 5)
    for i in range(5):
        for j in range(i + 1, 5):
            expected[i, j] = p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
    assert torch.allclose(pairs / n, expected, atol=0.025), (pairs / n, expected)


def test_soft_magnitude_never_keeps_inactive_positions_even_with_zero_weights():
    weight = torch.zeros(2, 5)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask.view(-1)[[1, 3, 6]] = True
    weight.view(-1)[6] = 0.3  # two active weights are exactly zero
    weight.grad = torch.zeros_like(weight)
    weight.grad.view(-1)[[0, 9]] = torch.tensor([5.0, 4.0])
    update_layer_topology(weight, mask, 3, 0.34, generator=torch.Generator().manual_seed(0))
    # keep ceil(3 * 0.66) = 2 among {1, 3, 6}; grow 1 at the largest |grad| among the rest: position 0
    on = set(mask.view(-1).nonzero().view(-1).tolist())
    assert len(on) == 3 and 0 in on and on - {0} <= {1, 3, 6}


# ---- training: custom loop ----


def _batch(step: int, vocab: int = 61):
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(3, vocab, (4, 10), generator=g)
    return {"input_ids": ids, "labels": ids}


def _train(model, opt, steps, total, start=0, seed=7, record=None):
    for step in range(start, steps):
        model(**_batch(step)).loss.backward()
        opt.step()
        before = {
            n: (m.weight_mask.clone(), opt.state[m.weight]["exp_avg_sq"].clone()) for n, m in model.sparse_modules()
        }
        model.sparsity_step(opt, step=step, total_steps=total, seed=seed)
        if record is not None:
            record(step, before)
        opt.zero_grad()


def test_density_exact_and_pruned_weights_zero_through_training_and_moments_zeroed():
    model = tiny_neurotrails(update_frequency=2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    updates = []

    def record(step, before):
        changed = 0
        for name, m in model.sparse_modules():
            assert int(m.weight_mask.sum()) == m.nt_num_active, (step, name)
            assert (m.weight[~m.weight_mask] == 0).all(), (step, name)
            old_mask, old_sq = before[name]
            newly = m.weight_mask & ~old_mask
            changed += int(newly.sum())
            state = opt.state[m.weight]
            if newly.any():
                assert (state["exp_avg"][newly] == 0).all() and (state["exp_avg_sq"][newly] == 0).all()
                assert (m.weight[newly] == 0).all()  # regrown weights start at zero
            untouched = ~newly  # every other position keeps its moments, inactive ones included
            assert torch.equal(state["exp_avg_sq"][untouched], old_sq[untouched])
        updates.append(changed)

    _train(model, opt, 6, total=6, record=record)
    assert updates[0] == updates[2] == updates[4] == 0  # masks only change every update_frequency steps
    assert updates[1] > updates[3] > 0  # the cosine-decayed prune rate shrinks the swaps


def test_zero_optimizer_state_reaches_the_accelerate_wrapped_optimizer():
    from accelerate import Accelerator

    p = torch.nn.Parameter(torch.ones(2, 3))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones_like(p)
    opt.step()
    wrapped = Accelerator(cpu=True).prepare_optimizer(opt)
    assert wrapped is not opt and wrapped.optimizer is opt
    positions = torch.tensor([True, False, False, False, False, True])
    zero_optimizer_state(wrapped, p, positions)
    assert opt.state[p]["exp_avg"].view(-1)[positions].eq(0).all()
    assert opt.state[p]["exp_avg"].view(-1)[~positions].ne(0).all()


def test_resume_from_saved_model_and_optimizer_continues_exactly(tmp_path):
    """Uninterrupted 4 steps vs 2 steps -> save_pretrained + optimizer state -> load -> 2 more (a topology update
    at step 3): identical weights and masks (masks in safetensors, closed-form prune rate, topology generator
    seeded by (seed, step))."""
    kw = {"update_frequency": 2}
    full = tiny_neurotrails(**kw).train()
    opt = torch.optim.AdamW(full.parameters(), lr=1e-2)
    _train(full, opt, 4, total=4)

    first = tiny_neurotrails(**kw).train()
    opt1 = torch.optim.AdamW(first.parameters(), lr=1e-2)
    _train(first, opt1, 2, total=4)
    first.save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file

    save_file({str(i): t for i, (_, t) in enumerate(sorted(_opt_tensors(opt1).items()))}, tmp_path / "o.safetensors")
    torch.manual_seed(999)
    resumed = AutoModelForCausalLM.from_pretrained(tmp_path).train()
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    state = opt1.state_dict()  # load the optimizer through its own state dict (steps and moments)
    opt2.load_state_dict(state)
    loaded = load_file(tmp_path / "o.safetensors")
    assert all(torch.equal(loaded[str(i)], t) for i, (_, t) in enumerate(sorted(_opt_tensors(opt2).items())))
    _train(resumed, opt2, 4, total=4, start=2)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def _opt_tensors(opt):
    return {f"{i}.{k}": v for i, s in enumerate(opt.state.values()) for k, v in s.items() if v.dim() > 0}


# ---- training: stock Trainer ----


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int = 64):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i % 4] for k, v in _batch(i // 4).items()}


def _trainer(model, out, max_steps, **kw):
    kw = {"save_strategy": "no", **kw}
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=2,
        report_to="none",
        use_cpu=True,
        seed=3,
        disable_tqdm=True,
        **kw,
    )
    callbacks = model.training_callbacks()  # what harnesses that build the Trainer read
    assert [type(c) for c in callbacks] == [NeuroTrailsSparsityCallback]
    return Trainer(model=model, args=args, train_dataset=_Data(), eval_dataset=_Data(8), callbacks=callbacks)


def test_trainer_callback_updates_topology_logs_trails_and_zeroes_moments(tmp_path):
    model = tiny_neurotrails(update_frequency=2)
    init_masks = {n: m.weight_mask.clone() for n, m in model.sparse_modules()}
    trainer = _trainer(model, tmp_path, max_steps=4)
    trainer.train()
    changed = 0
    inner = trainer.optimizer.optimizer  # accelerate's AcceleratedOptimizer wraps it
    for name, m in model.sparse_modules():
        assert int(m.weight_mask.sum()) == m.nt_num_active
        assert (m.weight[~m.weight_mask] == 0).all(), name
        changed += int((m.weight_mask != init_masks[name]).sum())
        assert inner.state[m.weight]["exp_avg"].shape == m.weight.shape
    assert changed > 0
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and {"trail_0_loss", "trail_2_accuracy", "trail_disagreement", "trail_kl", "prune_rate"} <= set(
        logs[0]
    )
    # the logged per-trail losses are of the same scale as the summed training loss / 3
    assert sum(logs[0][f"trail_{h}_loss"] for h in range(3)) == pytest.approx(logs[0]["loss"], rel=0.1)
    # evaluation: loss of the averaged model through the stock prediction loop, per-trail metrics added
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_trail_0_loss", "eval_trail_disagreement"} <= set(metrics)
    assert metrics["eval_loss"] == pytest.approx(sum(metrics[f"eval_trail_{h}_loss"] for h in range(3)), rel=1e-4)


@pytest.mark.slow
def test_trainer_resume_from_checkpoint_matches_uninterrupted(tmp_path):
    full = tiny_neurotrails(update_frequency=2)
    _trainer(full, tmp_path / "a", max_steps=6).train()
    part = tiny_neurotrails(update_frequency=2)
    _trainer(part, tmp_path / "b", max_steps=6, save_strategy="steps", save_steps=3).train()
    resumed = tiny_neurotrails(seed=5, update_frequency=2)
    _trainer(resumed, tmp_path / "b", max_steps=6).train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
        if name.endswith("weight_mask"):
            assert torch.equal(a, b), name


# ---- CLI ----


def test_cli_pretraining_run(tmp_path):
    from hf_plugins.cli.main import main
    from hf_plugins.models.neurotrails import NeuroTrailsForCausalLM

    argv = ["train", "--model_config", "neurotrails", "--tokenizer", "tiny", "--max_steps", "2", "--eval_size", "0"]
    argv += [
        "--method",
        "full",
        "--train_size",
        "16",
        "--output_dir",
        str(tmp_path),
        "--model_config_args",
        "update_frequency=1",
    ]
    assert main(argv) == 0
    model = NeuroTrailsForCausalLM.from_pretrained(tmp_path / "model")
    assert model.config.num_trails == 3 and model.sparse_modules()
    for name, m in model.sparse_modules():
        assert int(m.weight_mask.sum()) == m.nt_num_active, name
    # The CLI attaches the model's own callbacks (`model.training_callbacks()`), so trained weights stay zero off
    # the masks; without the callback Adam would fill them in.
    for name, m in model.sparse_modules():
        assert (m.weight[~m.weight_mask] == 0).all(), name


def _fsdp2_worker(rank: int, port: int, out_dir: str) -> None:
    """One of 2 gloo ranks: a plain pair of masked linears and an FSDP2 copy (`fully_shard`; 5 rows: shards of 3 and
    2; 1 row: rank 1's shard is empty) take 4 AdamW steps with a topology update after each; both ranks save."""
    import os

    import torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    from hf_plugins.distributed import full_tensor
    from hf_plugins.models.neurotrails_sparsity import apply_masks, random_mask, topology_generator

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:

        def make():
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(8, 5, bias=False), nn.Tanh(), nn.Linear(5, 1, bias=False))
            for layer, active in ((model[0], 24), (model[2], 3)):
                layer.register_buffer("weight_mask", random_mask(layer.weight.shape, active))
                layer.nt_num_active = active
            return model

        ref, shd = make(), make()
        fully_shard(shd)
        out = {"initial": [ref[0].weight_mask.clone(), ref[2].weight_mask.clone()]}
        for tag, model in (("ref", ref), ("fsdp2", shd)):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            layers = [model[0], model[2]]
            apply_masks([m.weight.detach() for m in layers], [m.weight_mask for m in layers])
            for step in range(4):
                g = torch.Generator().manual_seed(step)
                x, y = torch.randn(6, 8, generator=g), torch.randn(6, 1, generator=g)
                ((model(x) - y) ** 2).mean().backward()  # same full batch on both ranks: FSDP2's mean = it
                opt.step()
                apply_masks([m.weight.detach() for m in layers], [m.weight_mask for m in layers])
                gen = topology_generator(0, step, "cpu")
                for m in layers:
                    criterion = "soft_magnitude" if step % 2 else "magnitude"
                    newly = update_layer_topology(
                        m.weight, m.weight_mask, m.nt_num_active, 0.4, criterion=criterion, generator=gen
                    )
                    zero_optimizer_state(opt, m.weight, newly)
                opt.zero_grad()
            out[tag] = {
                "masks": [m.weight_mask.clone() for m in layers],
                "weights": [full_tensor(m.weight.detach()) for m in layers],
                "moments": [full_tensor(opt.state[m.weight][k]) for m in layers for k in ("exp_avg", "exp_avg_sq")],
            }
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_fsdp2_topology_updates_match_one_process_on_every_rank(tmp_path):
    """Under FSDP2 (2 gloo processes, sharded weights, whole mask buffers): every rank draws the same new masks as one
    process on the same gradients (from the gathered weights and gradients), masks its own shard, and zeroes the
    moments of newly active positions in its shard of the (sharded) optimizer state."""
    import os
    import sys

    import torch.multiprocessing as mp

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from _dist_launch import free_port

    mp.start_processes(_fsdp2_worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    outs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    ref = outs[0]["ref"]
    assert not torch.equal(ref["masks"][0], outs[0]["initial"][0]), "the topology never changed"
    for r, out in enumerate(outs):
        for a, b in zip(out["fsdp2"]["masks"], ref["masks"]):
            assert torch.equal(a, b), f"rank {r}: mask differs from one process"
        for a, b in zip(out["fsdp2"]["weights"] + out["fsdp2"]["moments"], ref["weights"] + ref["moments"]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
            assert torch.equal(a == 0, b == 0)  # pruned weights and zeroed moments at the same positions
