"""The effective-weight cache of the sparse-delta tuners (hf_plugins/tuners/_sparse_delta_cache.py): the cached
forward must be the transient one, bit for bit, through training with SEFT cycles and LIFT refreshes, and it must
never serve a stale W_eff after any change it can see. The reference is the transient path (W_eff rebuilt inside
every forward / backward), itself checked against dense plain-model references in test_seft.py and test_lift.py."""

import copy

import pytest
import torch
from peft import get_peft_model

import hf_plugins  # noqa: F401  (registers PeftType.SEFT)
from hf_plugins import LiftConfig, SeftConfig
from hf_plugins.testing import tiny_model
from hf_plugins.tuners import _sparse_delta_autograd
from hf_plugins.tuners.lift import LiftLayer
from hf_plugins.tuners.seft import SeftLayer


def _seft(model, cache=True, **kw):
    kw = {"density": 0.05, "update_interval": 2, "accumulation_steps": 1, "task_type": "CAUSAL_LM", **kw}
    return get_peft_model(copy.deepcopy(model), SeftConfig(cache_effective_weight=cache, **kw))


def _layers(pm):
    return [m for m in pm.modules() if isinstance(m, SeftLayer)]


def _transient_logits(pm, x):
    """Logits of the same model through the transient path (the cache switched off for one forward)."""
    cache = pm.base_model.weight_cache
    cache.enabled["default"] = False
    try:
        with torch.no_grad():
            return pm(input_ids=x).logits
    finally:
        cache.enabled["default"] = True


@pytest.fixture
def count_builds(monkeypatch):
    """Counts transient W_eff builds (`_effective_weight` calls)."""
    calls = []
    real = _sparse_delta_autograd._effective_weight

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_sparse_delta_autograd, "_effective_weight", counting)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_training_is_bit_identical_to_transient_training(pruned_llama, calib, dtype, count_builds):
    """Eight steps with four drop / grow / re-prune cycles (R non-empty, deltas on re-pruned positions): after
    every step the cached and the transient model hold identical values, positions and R, and give identical
    logits; with the cache on, no layer ever builds W_eff itself."""
    base = copy.deepcopy(pruned_llama).to(dtype)
    runs = {}
    for cache in (True, False):
        pm = _seft(base, cache=cache, drop_fraction=0.5, drop_schedule="constant")
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
        snaps = []
        count_builds.clear()
        for step in range(8):
            pm.seft_prepare_step(step, 100)
            pm(input_ids=calib[:4], labels=calib[:4]).loss.backward()
            opt.step()
            pm.seft_after_optimizer_step(opt, step, 100)
            opt.zero_grad()
            with torch.no_grad():
                logits = pm(input_ids=calib[4:6]).logits
            state = [
                (m.seft_indices["default"].clone(), m.seft_values["default"].detach().clone(),
                 m.seft_pruned_indices["default"].clone())
                for m in _layers(pm)
            ]  # fmt: skip
            snaps.append((logits, state))
        runs[cache] = (snaps, len(count_builds), pm)
    (cached, builds_cached, pm_c), (transient, builds_transient, _) = runs[True], runs[False]
    assert builds_cached == 0 and builds_transient > 0
    cache = pm_c.base_model.weight_cache
    assert len(cache.entries) == len(_layers(pm_c))
    assert cache.nbytes == sum(m.weight_numel for m in _layers(pm_c)) * torch.tensor([], dtype=dtype).element_size()
    assert sum(m.seft_pruned_indices["default"].numel() for m in _layers(pm_c)) > 0
    for (lc, sc), (lt, st) in zip(cached, transient):
        assert torch.equal(lc, lt)
        for a, b in zip(sc, st):
            for x, y in zip(a, b):
                assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lift_cached_training_is_bit_identical_to_transient_training(calib, dtype, count_builds):
    """LIFT with three mask refreshes (on_leave="keep": a frozen residual in W_eff): after every step the cached and
    the transient model hold identical values, masks and residuals and give identical logits."""
    base = tiny_model("llama").to(dtype)
    runs = {}
    for cache in (True, False):
        pm = get_peft_model(copy.deepcopy(base), LiftConfig(r=2, task_type="CAUSAL_LM", cache_effective_weight=cache))
        pm.initialize_masks()
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=5e-2)
        count_builds.clear()
        snaps = []
        for step in range(7):
            pm(input_ids=calib[:4], labels=calib[:4]).loss.backward()
            opt.step()
            opt.zero_grad()
            if step % 2 == 1:
                pm.refresh_masks(opt)
            with torch.no_grad():
                logits = pm(input_ids=calib[4:6]).logits
            layers = [m for m in pm.modules() if isinstance(m, LiftLayer)]
            state = [tuple(t.detach().clone() for t in m.sparse_state("default").values()) for m in layers]
            snaps.append((logits, state))
        runs[cache] = (snaps, len(count_builds), layers)
    (cached, builds_cached, layers), (transient, builds_transient, _) = runs[True], runs[False]
    assert builds_cached == 0 and builds_transient > 0
    assert sum(m.lift_residual_indices["default"].numel() for m in layers) > 0
    for (lc, sc), (lt, st) in zip(cached, transient):
        assert torch.equal(lc, lt)
        for a, b in zip(sc, st):
            for x, y in zip(a, b):
                assert torch.equal(x, y)


def test_one_value_refresh_per_optimizer_step_and_one_rebuild_per_cycle(pruned_llama, calib, monkeypatch):
    """The upkeep is per step, not per layer: one values refresh after each optimizer step, gradient accumulation
    and eval forwards add none, and only a cycle (new A and R) rebuilds the buffer."""
    from hf_plugins.tuners._sparse_delta_cache import SparseDeltaWeightCache

    counts = {"refresh": 0, "rebuild": 0}
    refresh, rebuild = SparseDeltaWeightCache._refresh, SparseDeltaWeightCache._rebuild

    def counting_refresh(self, *a):
        counts["refresh"] += 1
        return refresh(self, *a)

    def counting_rebuild(self, *a):
        counts["rebuild"] += 1
        return rebuild(self, *a)

    monkeypatch.setattr(SparseDeltaWeightCache, "_refresh", counting_refresh)
    monkeypatch.setattr(SparseDeltaWeightCache, "_rebuild", counting_rebuild)
    pm = _seft(pruned_llama, update_interval=3, accumulation_steps=1)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2, foreach=True)
    seen = []
    for step in range(6):
        pm.seft_prepare_step(step, 100)
        for micro in (calib[:2], calib[2:4]):  # two micro-batches per step
            pm(input_ids=micro, labels=micro).loss.backward()
        opt.step()
        pm.seft_after_optimizer_step(opt, step, 100)
        opt.zero_grad()
        with torch.no_grad():
            pm(input_ids=calib[4:6])
        seen.append(dict(counts))
    assert [c["refresh"] for c in seen] == [2, 3, 4, 5, 6, 7]  # first step: build + refresh after its update
    assert [c["rebuild"] for c in seen] == [1, 1, 2, 2, 2, 3]  # cycles after steps 2 and 5


def test_every_visible_change_reaches_the_next_forward(pruned_llama, calib):
    """Each change is followed by a forward that must equal the transient one: an optimizer step (foreach and
    fused AdamW), an in-place edit of δ, new positions A, a new re-pruned set R, a base weight loaded in place,
    set_adapter, and a `.data` edit followed by `invalidate_weight_cache()`."""
    pm = _seft(pruned_llama)
    x = calib[4:6]
    layer = _layers(pm)[3]
    params = [p for p in pm.parameters() if p.requires_grad]

    def check():
        with torch.no_grad():
            assert torch.equal(pm(input_ids=x).logits, _transient_logits(pm, x))

    check()
    for fused in (False, True):
        opt = torch.optim.AdamW(params, lr=1e-2, fused=fused, foreach=None if fused else True)
        pm(input_ids=calib[:4], labels=calib[:4]).loss.backward()
        opt.step()
        opt.zero_grad()
        check()
    with torch.no_grad():
        layer.seft_values["default"].add_(0.5)
    check()
    A = layer.seft_indices["default"]
    layer.seft_indices["default"] = torch.flip(torch.sort(A)[0], [0]).contiguous()  # same set, new order
    with torch.no_grad():
        layer.seft_values["default"].copy_(torch.linspace(-1, 1, A.numel()))
    check()
    w0 = layer.get_base_layer().weight
    support = torch.nonzero(w0.detach().view(-1) != 0).view(-1)
    layer.seft_pruned_indices["default"] = support[:7].to(torch.int32)
    check()
    with torch.no_grad():
        w0.copy_(w0 * 1.5)
    check()
    pm.add_adapter("other", SeftConfig(density=0.05, init_seed=1, task_type="CAUSAL_LM"))
    pm.set_adapter("other")
    with torch.no_grad():
        for m in _layers(pm):
            m.seft_values["other"].fill_(0.01)
    cache = pm.base_model.weight_cache
    with torch.no_grad():
        y_other = pm(input_ids=x).logits
    assert cache.key[0] == "other"
    cache.enabled["other"] = False
    with torch.no_grad():
        assert torch.equal(y_other, pm(input_ids=x).logits)
    pm.set_adapter("default")
    check()
    layer.seft_values["default"].data.mul_(-1)  # invisible to version counters: the documented invalidate call
    pm.base_model.invalidate_weight_cache()
    check()


def test_a_graph_pending_across_a_refresh_raises_instead_of_using_a_stale_weight(pruned_llama, calib):
    """forward -> optimizer step -> forward -> backward of the first graph: autograd's version check refuses,
    where reusing the refreshed W_eff would silently give the gradient of other weights."""
    pm = _seft(pruned_llama)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    loss = pm(input_ids=calib[:2], labels=calib[:2]).loss
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    pm(input_ids=calib[2:4], labels=calib[2:4])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_gradient_accumulation_and_a_second_forward_before_backward_are_exact(pruned_llama, calib):
    """Two forwards (e.g. policy and a disabled-adapter reference) before one backward: no refresh happens in between,
    and the values' gradient equals the transient path's."""
    grads = {}
    for cache in (True, False):
        pm = _seft(pruned_llama, cache=cache)
        with torch.no_grad():
            for m in _layers(pm):
                m.seft_values["default"].normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
        loss = pm(input_ids=calib[:2], labels=calib[:2]).loss
        with torch.no_grad(), pm.disable_adapter():
            pm(input_ids=calib[2:4])
        loss = loss + pm(input_ids=calib[2:4], labels=calib[2:4]).loss
        loss.backward()
        grads[cache] = [m.seft_values["default"].grad.clone() for m in _layers(pm)]
    for a, b in zip(grads[True], grads[False]):
        assert torch.equal(a, b)


def test_deepcopy_gets_its_own_cache_and_unload_releases_it(pruned_llama, calib):
    pm = _seft(pruned_llama)
    x = calib[4:6]
    with torch.no_grad():
        y = pm(input_ids=x).logits
    twin = copy.deepcopy(pm)
    c0, c1 = pm.base_model.weight_cache, twin.base_model.weight_cache
    assert c1 is not c0 and all(any(m is t for t in _layers(twin)) for m in c1.layers)
    with torch.no_grad():
        for m in _layers(twin):
            m.seft_values["default"].fill_(0.05)
        y_twin = twin(input_ids=x).logits
        assert torch.equal(pm(input_ids=x).logits, y)  # the original is untouched
        assert not torch.equal(y_twin, y)
        assert torch.equal(y_twin, _transient_logits(twin, x))
    merged = twin.merge_and_unload()
    assert c1.buffer is None and c1.layers == []
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, y_twin, atol=1e-5, rtol=1e-5)


def test_autocast_dtype_switch_and_inference_mode(pruned_llama, calib):
    """fp32 base under bf16 autocast: the cache holds bf16 W_eff (half the base's bytes) and equals the transient
    path; a plain fp32 forward rebuilds it in fp32; a first forward under inference_mode leaves a cache that training
    can still use."""
    pm = _seft(pruned_llama)
    x = calib[4:6]
    with torch.no_grad():
        for m in _layers(pm):
            m.seft_values["default"].normal_(0, 0.02, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf16 = pm(input_ids=x).logits
    cache = pm.base_model.weight_cache
    assert cache.buffer.dtype == torch.bfloat16
    assert cache.nbytes == 2 * sum(m.weight_numel for m in _layers(pm))
    cache.enabled["default"] = False
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(y_bf16, pm(input_ids=x).logits)
    cache.enabled["default"] = True
    with torch.no_grad():
        assert torch.equal(pm(input_ids=x).logits, _transient_logits(pm, x))
    assert cache.buffer.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pm(input_ids=x, labels=x).loss.backward()  # a buffer made under inference_mode could not be saved
    assert all(m.seft_values["default"].grad is not None for m in _layers(pm))


@pytest.mark.gpu
@pytest.mark.parametrize("tuner", ["seft", "lift"])
def test_cuda_cached_and_transient_steps_are_bit_identical(pruned_llama, calib, tuner):
    """On the GPU the transient path uses the Triton scatter kernels, the cache ATen ops: same bits after SEFT cycles
    that leave deltas on re-pruned positions, or after LIFT refreshes that leave a residual."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    base = copy.deepcopy(pruned_llama).to("cuda", torch.bfloat16)
    out = []
    for cache in (True, False):
        if tuner == "seft":
            pm = _seft(base, cache=cache, drop_fraction=0.5, drop_schedule="constant")
        else:
            cfg = LiftConfig(r=2, task_type="CAUSAL_LM", cache_effective_weight=cache)
            pm = get_peft_model(copy.deepcopy(base), cfg)
            pm.initialize_masks()
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2, fused=True)
        x = calib[:4].cuda()
        for step in range(6):
            if tuner == "seft":
                pm.seft_prepare_step(step, 100)
            pm(input_ids=x, labels=x).loss.backward()
            opt.step()
            if tuner == "seft":
                pm.seft_after_optimizer_step(opt, step, 100)
            elif step % 2 == 1:
                pm.refresh_masks(opt)
            opt.zero_grad()
        with torch.no_grad():
            out.append(pm(input_ids=x).logits)
        assert pm.base_model.weight_cache.nbytes > 0 if cache else True
    assert torch.equal(out[0], out[1])


@pytest.fixture
def gloo_world_of_one(tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("units", ["blocks_and_root", "root_only", "root_only_after_a_forward"])
def test_fsdp2_switches_the_cache_off_and_trains_as_the_transient_path(pruned_llama, calib, gloo_world_of_one, units):
    """FSDP2 gathers parameters per unit inside forward and shards them outside it. Sharding every decoder block: the
    first refresh sees the other blocks' DTensors and never builds the buffer. Sharding only the root: every layer
    looks unsharded inside forward, the first step is served from a buffer built from the gathered tensors, and the
    first optimizer step (sharded values) switches the cache off. Both train exactly as with the cache off."""
    from torch.distributed.fsdp import fully_shard

    losses = {}
    for cache in (True, False):
        pm = _seft(pruned_llama, cache=cache)
        if units == "root_only_after_a_forward":  # the cache holds the unsharded parameters when fully_shard runs
            with torch.no_grad():
                pm(input_ids=calib[:4])
        if units == "blocks_and_root":
            for block in pm.base_model.model.model.layers:
                fully_shard(block)
        fully_shard(pm)
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
        out = []
        for _ in range(3):
            loss = pm(input_ids=calib[:4], labels=calib[:4]).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            out.append(loss.item())
        losses[cache] = out
        if cache:
            c = pm.base_model.weight_cache
            assert c.sharded and c.buffer is None
    assert losses[True] == losses[False]


def test_the_switch_is_a_validated_bool_and_the_cli_parses_shell_booleans():
    """`--method-arg cache_effective_weight=false` must switch the cache off (not arrive as the truthy string
    "false"), and a config given a non-bool names the field."""
    from hf_plugins import registry

    opts = registry.parse_options(["cache_effective_weight=false", "r=4", "x=None", "y=TRUE", "z=abc"], "--method-arg")
    assert opts == {"cache_effective_weight": False, "r": 4, "x": None, "y": True, "z": "abc"}
    for method in ("seft", "lift"):
        cfg = registry.METHODS[method].build(None, {"cache_effective_weight": False})
        assert cfg.cache_effective_weight is False
    assert LiftConfig().cache_effective_weight is False and SeftConfig().cache_effective_weight is True
    for cls in (LiftConfig, SeftConfig):
        with pytest.raises(ValueError, match="`cache_effective_weight`"):
            cls(cache_effective_weight="false")


def test_a_model_the_cache_cannot_serve_is_checked_once_not_at_every_forward(pruned_llama, calib, monkeypatch):
    """A trainable base weight (here: every layer's) is not served; the cache notes it once and the transient path
    runs without a structure check per forward, until something changes."""
    from hf_plugins.tuners._sparse_delta_cache import SparseDeltaWeightCache

    checks = []
    real = SparseDeltaWeightCache._check_structure

    def counting(self, *a):
        checks.append(1)
        return real(self, *a)

    monkeypatch.setattr(SparseDeltaWeightCache, "_check_structure", counting)
    pm = _seft(pruned_llama)
    for m in _layers(pm):
        m.get_base_layer().weight.requires_grad_(True)
    with torch.no_grad():
        for _ in range(3):
            y = pm(input_ids=calib[4:6]).logits
    assert len(checks) == 1 and pm.base_model.weight_cache.buffer is None
    pm.base_model.invalidate_weight_cache()
    for m in _layers(pm):
        m.get_base_layer().weight.requires_grad_(False)
    with torch.no_grad():
        assert torch.equal(pm(input_ids=calib[4:6]).logits, y)
    assert len(checks) == 2 and pm.base_model.weight_cache.buffer is not None
    layer = _layers(pm)[0]
    w = layer.get_base_layer().weight
    w.requires_grad_(True)  # unfrozen after the build: this layer must leave the cache and give W0 its gradient
    pm(input_ids=calib[4:6], labels=calib[4:6]).loss.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert id(layer) not in pm.base_model.weight_cache.entries
