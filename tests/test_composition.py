"""Every plugin combined with every other: tuner x optimizer x collator x model type under the stock `Trainer`.

Each combination trains 2 steps, saves a checkpoint and stops; a fresh model and trainer resume it for a 3rd step;
the three losses and every weight and buffer must equal an uninterrupted 3-step run's. A pairwise-covering subset
runs by default, the whole product under `-m slow`. Combinations that cannot work must fail at construction with
one line naming both plugins. The table and the README's matrix live in `tests/_composition.py`.
"""

import gc
from pathlib import Path

import pytest
import torch
from _composition import (
    AXES,
    AXIS_NAMES,
    EXAMPLES,
    MODELS,
    NOTES,
    REFUSALS,
    all_combos,
    build_trainer,
    combo_id,
    notes_for,
    pairwise_subset,
    readme_section,
    render_matrix,
    value_pairs,
)
from transformers import TrainerCallback

import hf_plugins  # noqa: F401


ALL = all_combos()
PAIRWISE = pairwise_subset(ALL)
_PAIRWISE_IDS = {combo_id(c) for c in PAIRWISE}
REST = [c for c in ALL if combo_id(c) not in _PAIRWISE_IDS]


@pytest.fixture(scope="module", autouse=True)
def _lean_process():
    """Speed only: tiny models run fastest on one thread, and the `gc.collect()` that accelerate runs after every
    `train()` (three per combination) skips the objects that already existed before this module (frozen)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
    torch.set_num_threads(threads)


class _StopAt(TrainerCallback):
    """Ends training after `step` optimizer steps (after that step's checkpoint is written): an interrupted run."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _losses(trainer) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def _state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _trainable(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def _masks(trainer) -> list[torch.Tensor]:
    from hf_plugins.models.neurotrails_callback import find_neurotrails_model

    nt = find_neurotrails_model(trainer.model)
    return [] if nt is None else [m.weight_mask.clone() for _, m in nt.sparse_modules()]


def _analysed_matrices(trainer) -> int:
    return sum("alphadecay_module" in group for group in trainer.optimizer.optimizer.param_groups)


def check_resume_is_exact(combo: dict, tmp_path: Path) -> None:
    """2 steps, checkpoint, stop; a fresh model and trainer resume for step 3: losses and every tensor of the state
    dict equal (bit for bit on the CPU) those of an uninterrupted 3-step run. Also checks the notes that apply."""
    straight = build_trainer(combo, tmp_path / "straight")
    before, masks_before = _trainable(straight), _masks(straight)
    embedding_before = straight.model.get_input_embeddings().weight.detach().clone()
    straight.train()
    interrupted = build_trainer(combo, tmp_path / "run", save_steps=2, extra=[_StopAt(2)])
    interrupted.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert interrupted.state.global_step == 2 and checkpoint.is_dir()
    # Full training restores every weight from the checkpoint: start the resumed run from other initial weights.
    resumed = build_trainer(combo, tmp_path / "resumed", seed=1 if combo["tuner"] == "full" else 0)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    want = _losses(straight)
    assert sorted(want) == [1, 2, 3] and sorted(_losses(resumed)) == [1, 2, 3]
    got = {**_losses(interrupted), 3: _losses(resumed)[3]}
    assert got == want, f"losses (interrupted + resumed) {got} != uninterrupted {want}"
    after = _trainable(straight)
    assert after.keys() == before.keys() == _trainable(resumed).keys() and after
    assert any(not torch.equal(after[n], before[n]) for n in after), "training changed no trainable tensor"
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key}: max |diff| {(a[key].double() - b[key].double()).abs().max()}"

    adapter = combo["tuner"] != "full"
    if combo["optim"].startswith("alphadecay"):  # note (a): no matrix to analyse under an adapter
        assert (_analysed_matrices(straight) == 0) == adapter
        assert ("a" in notes_for(combo)) == adapter
    if combo["model"] == "neurotrails":  # note (n): an adapter freezes the trails' topology
        masks_after = _masks(straight)
        assert masks_before and len(masks_after) == len(masks_before)
        unchanged = all(torch.equal(x, y) for x, y in zip(masks_before, masks_after))
        assert unchanged == adapter
        assert ("n" in notes_for(combo)) == adapter
    if combo["collator"] == "meap" and MODELS[combo["model"]]["resizable"]:  # note (t): the new row stays frozen
        mask_row = straight.model.get_input_embeddings().weight[-1]
        assert torch.equal(mask_row, embedding_before[-1]) == adapter
        assert ("t" in notes_for(combo)) == adapter


@pytest.mark.parametrize("combo", PAIRWISE, ids=combo_id)
def test_pairwise_combination_trains_saves_and_resumes_exactly(combo, tmp_path):
    check_resume_is_exact(combo, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("combo", REST, ids=combo_id)
def test_every_other_combination_trains_saves_and_resumes_exactly(combo, tmp_path):
    check_resume_is_exact(combo, tmp_path)


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda r: r.key)
def test_a_combination_that_cannot_work_fails_at_construction_in_one_line(refusal, tmp_path):
    with pytest.raises(refusal.error) as info:
        build_trainer(refusal.combo, tmp_path, **refusal.variant)
    message = str(info.value)
    assert "\n" not in message
    for name in (*refusal.plugins, refusal.hint):
        assert name in message, f"{name!r} missing from: {message}"


def test_the_default_subset_covers_every_pair_of_values():
    """Every pair of values of two axes is trained in the default suite, in 16 combinations (4 x 4, the least
    possible), the named examples among them."""
    covered = set().union(*(value_pairs(c) for c in PAIRWISE))
    sizes = [len(AXES[a]) for a in AXIS_NAMES]
    assert len(covered) == sum(x * y for i, x in enumerate(sizes) for y in sizes[i + 1 :])
    assert covered == set().union(*(value_pairs(c) for c in ALL))
    assert len(PAIRWISE) == 16 and len({combo_id(c) for c in PAIRWISE}) == 16
    assert all(combo_id(c) in _PAIRWISE_IDS for c in EXAMPLES)
    assert len(PAIRWISE) + len(REST) == len(ALL) == 128


def test_readme_matrix_is_generated_from_the_table():
    readme = Path(__file__).resolve().parents[1] / "README.md"
    assert readme_section(readme.read_text()) == render_matrix(), "run `python tests/_composition.py --write`"


def test_the_table_names_registry_entries():
    from hf_plugins import registry

    assert set(AXES["tuner"]) <= set(registry.METHODS)
    assert set(AXES["optim"]) <= set(registry.OPTIMIZERS)
    assert set(AXES["collator"]) - {"default"} <= set(registry.COLLATORS)
    assert set(AXES["model"]) == set(MODELS)
    for rule in NOTES:
        for axis, values in rule.when.items():
            assert set(values) <= set(AXES[axis]), rule.key
    for refusal in REFUSALS:
        assert refusal.combo in ALL, refusal.key
