"""SRLM recipe (arXiv 2506.13404): stages on tiny models, hand-off, logit-KD loss, teachers, clear errors."""

import math
import os

import pytest
import torch

from hf_plugins.data.arithmetic import ArithmeticConfig, generate_problems
from hf_plugins.recipes.srlm import (
    DIVERGENCES,
    ArithmeticTeacher,
    KdStageConfig,
    RlStageConfig,
    SftStageConfig,
    SrlmConfig,
    check_same_vocabulary,
    logit_kd_loss,
    run_srlm,
    sample_teacher_solutions,
)
from hf_plugins.rewards.answers import extract_answer
from hf_plugins.testing import tiny_model, tiny_tokenizer


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_change(a, b):
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


class _Recorder:
    """`hook` for run_srlm: the state dict at the start and the end of every stage."""

    def __init__(self):
        self.start, self.end = {}, {}

    def __call__(self, event, index, stage, model):
        (self.start if event == "start" else self.end)[index] = _snapshot(model)


def _tiny_config(stages, **kw):
    small = {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 96}
    defaults = {
        "stages": stages,
        "num_problems": 6,
        "eval_size": 0,
        "sft": SftStageConfig(**small, learning_rate=1e-2),
        "kd": KdStageConfig(**small, learning_rate=1e-2),
        "rl": RlStageConfig(max_steps=1, num_generations=2, max_completion_length=6, learning_rate=1e-2),
    }
    defaults.update(kw)
    return SrlmConfig(**defaults)


# ---------------------------------------------------------------------------------------------- logit-KD loss
def _hand_divergence(s_logits, t_logits, mask, divergence):
    """Explicit per-token loop in Python floats: KL(p_T||p_S), KL(p_S||p_T), or the beta=0.5 JSD."""
    total, count = 0.0, 0
    for b in range(s_logits.shape[0]):
        for t in range(s_logits.shape[1]):
            if not mask[b, t]:
                continue
            zs = [math.exp(x) for x in s_logits[b, t].tolist()]
            zt = [math.exp(x) for x in t_logits[b, t].tolist()]
            ps = [x / sum(zs) for x in zs]
            pt = [x / sum(zt) for x in zt]
            if divergence == "forward_kl":
                d = sum(a * math.log(a / c) for a, c in zip(pt, ps))
            elif divergence == "reverse_kl":
                d = sum(c * math.log(c / a) for a, c in zip(pt, ps))
            else:
                m = [(a + c) / 2 for a, c in zip(pt, ps)]
                d = 0.5 * sum(a * math.log(a / x) for a, x in zip(pt, m)) + 0.5 * sum(
                    c * math.log(c / x) for c, x in zip(ps, m)
                )
            total += d
            count += 1
    return total / count


@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
def test_logit_kd_loss_equals_hand_computation(divergence):
    """Our loss, GKDTrainer.generalized_jsd_loss and DistillationTrainer's chunked loss (with our divergence ->
    beta mapping) all equal a hand computation of the divergence averaged over unmasked tokens."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    g = torch.Generator().manual_seed(0)
    B, T, H, V = 2, 3, 5, 7
    hs, ht = (
        torch.randn(B, T, H, generator=g, dtype=torch.float64),
        torch.randn(B, T, H, generator=g, dtype=torch.float64),
    )
    ws, wt = torch.randn(V, H, generator=g, dtype=torch.float64), torch.randn(V, H, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    s_logits, t_logits = hs @ ws.T, ht @ wt.T
    want = _hand_divergence(s_logits, t_logits, mask, divergence)
    beta = DIVERGENCES[divergence]

    assert float(logit_kd_loss(s_logits, t_logits, mask, divergence)) == pytest.approx(want, rel=1e-10)
    labels = torch.where(mask.bool(), 1, -100)
    gkd = GKDTrainer.generalized_jsd_loss(s_logits, t_logits, labels=labels, beta=beta)
    assert float(gkd) == pytest.approx(want, rel=1e-10)
    chunked = _chunked_divergence_loss(hs, ht, ws, wt, mask, beta=beta)[0]  # computes in fp32 internally
    assert float(chunked) == pytest.approx(want, rel=1e-6)


# ---------------------------------------------------------------------------------------------- teachers
def test_programmatic_teacher_is_exact_and_differs_in_style():
    problems = generate_problems(ArithmeticConfig(num_train=200, num_test=0))
    for p, text in ArithmeticTeacher().solutions(problems):
        got = extract_answer(text)
        assert got.value == p.answer and got.rule == "boxed"
        assert "####" not in text and text.startswith("Start:")
        assert text.splitlines()[1:-1] != p.steps[1:]  # not the SFT narration


class _ScriptedTeacher(torch.nn.Module):
    """A 'model' whose samples are fixed strings (ids into `texts`): checks filtering and dedupe exactly."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, num_return_sequences, **kw):
        rows = input_ids.shape[0] * num_return_sequences
        new = torch.arange(rows).unsqueeze(1)
        prompt = input_ids.repeat_interleave(num_return_sequences, 0)
        return torch.cat([prompt, new], dim=1)


class _ScriptedTokenizer:
    pad_token_id, eos_token_id, padding_side, chat_template = 0, 0, "right", None

    def __init__(self, texts):
        self.texts = texts

    def __call__(self, prompts, **kw):
        from transformers import BatchEncoding

        return BatchEncoding({"input_ids": torch.zeros(len(prompts), 2, dtype=torch.long)})

    def batch_decode(self, ids, **kw):
        return [self.texts[int(row[0])] for row in ids]


def test_sampled_teacher_solutions_are_filtered_by_answer_and_deduplicated():
    problems = generate_problems(ArithmeticConfig(num_train=2, num_test=0))
    a0, a1 = problems[0].answer, problems[1].answer
    texts = [f"#### {a0}", f"#### {a0}", f"#### {a0 + 1}", f"\\boxed{{{a0}}}", "no idea", f"#### {a1}", "#### -1", "x"]
    kept, stats = sample_teacher_solutions(
        _ScriptedTeacher(), _ScriptedTokenizer(texts), problems, samples_per_problem=4
    )
    assert [(p.question, t) for p, t in kept] == [
        (problems[0].question, f"#### {a0}"),
        (problems[0].question, f"\\boxed{{{a0}}}"),
        (problems[1].question, f"#### {a1}"),
    ]
    assert stats == {"sampled": 8, "kept": 3, "problems": 2, "problems_solved": 2}


# ---------------------------------------------------------------------------------------------- pipeline
def test_sft_kd_rl_pipeline_trains_each_stage_and_hands_weights_on():
    """Every stage changes the weights; with the in-memory hand-off the start of stage k+1 is bitwise the end
    of stage k. The RL stage gets a reward that varies within each group (the tiny model never answers)."""

    def coin(completions, **kw):
        return [float(i % 2) for i in range(len(completions))]

    tok, model = tiny_tokenizer(), tiny_model("llama")
    rec = _Recorder()
    rl = RlStageConfig(
        max_steps=1, num_generations=2, max_completion_length=6, learning_rate=1e-2, extra_rewards=[coin]
    )
    final, report = run_srlm(model, tok, _tiny_config("sft,kd,rl", rl=rl), hook=rec)
    assert [s["stage"] for s in report["stages"]] == ["sft", "kd", "rl"]
    for i in range(3):
        assert _max_change(rec.start[i], rec.end[i]) > 0, report["stages"][i]["stage"]
    for i in range(2):
        assert _max_change(rec.end[i], rec.start[i + 1]) == 0
    assert _max_change(rec.end[2], _snapshot(final)) == 0
    assert report["stages"][1]["teacher_data"]["teacher"].startswith("arithmetic")
    assert report["stages"][0]["train_tokens"] > 0 and report["stages"][2]["log_history"]


def test_disk_handoff_with_a_merged_lora_stage_keeps_weights(tmp_path):
    """A LoRA sft stage is merged before the hand-off; saving and reloading through safetensors keeps the
    merged weights bitwise, and the next (full) stage starts from them."""
    tok, model = tiny_tokenizer(), tiny_model("llama")
    rec = _Recorder()
    sft = SftStageConfig(
        max_steps=1,
        per_device_train_batch_size=2,
        max_length=96,
        method="lora",
        method_options={"r": 2},
        learning_rate=1e-1,
    )
    cfg = _tiny_config("sft,sft", sft=sft, handoff="disk", output_dir=str(tmp_path))
    _, report = run_srlm(model, tok, cfg, hook=rec)
    assert [s["peft"] for s in report["stages"]] == [True, True]
    assert not any("lora" in k for k in rec.end[0])  # merged: a plain model is handed on
    assert _max_change(rec.start[0], rec.end[0]) > 0
    assert _max_change(rec.end[0], rec.start[1]) == 0
    assert (tmp_path / "0-sft" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "report.json").is_file()


def test_grpo_with_equal_rewards_in_every_group_trains_nothing():
    """The tiny model never answers correctly: every group has equal rewards, so the advantage is 0, the loss
    and gradient norm are 0, frac_reward_zero_std is 1 and the weights do not move."""
    tok, model = tiny_tokenizer(), tiny_model("llama")
    before = _snapshot(model)
    final, report = run_srlm(model, tok, _tiny_config("rl"))
    log = report["stages"][0]["log_history"][0]
    assert log["loss"] == 0 and log["grad_norm"] == 0 and log["frac_reward_zero_std"] == 1
    assert _max_change(before, _snapshot(final)) == 0


def test_logit_kd_with_distillation_trainer_runs():
    tok = tiny_tokenizer()
    student, teacher = tiny_model("llama"), tiny_model("llama", seed=1)
    before = _snapshot(student)
    kd = KdStageConfig(max_steps=1, per_device_train_batch_size=2, kind="logit", teacher=teacher, divergence="forward_kl",
                       max_completion_length=6, learning_rate=1e-2)  # fmt: skip
    final, report = run_srlm(student, tok, _tiny_config("kd", kd=kd))
    assert _max_change(before, _snapshot(final)) > 0
    assert report["stages"][0]["divergence"] == "forward_kl" and report["stages"][0]["log_history"][0]["loss"] > 0


@pytest.mark.slow
def test_logit_kd_with_gkd_trainer_runs():
    tok = tiny_tokenizer()
    student, teacher = tiny_model("llama"), tiny_model("llama", seed=1)
    before = _snapshot(student)
    kd = KdStageConfig(max_steps=1, per_device_train_batch_size=2, kind="logit", trainer="gkd", teacher=teacher,
                       divergence="jsd", max_completion_length=6, max_length=96, learning_rate=1e-2)  # fmt: skip
    final, _ = run_srlm(student, tok, _tiny_config("kd", kd=kd))
    assert _max_change(before, _snapshot(final)) > 0


# ---------------------------------------------------------------------------------------------- errors
def test_bad_stage_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown SRLM stage name\(s\) \['ppo'\]; known stages: sft, kd, rl"):
        SrlmConfig(stages="sft,ppo")


def test_incompatible_teacher_vocabulary_is_refused_before_training():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = tiny_tokenizer()
    vocab = {t: (i + 1) % len(tok) for t, i in tok.get_vocab().items()}  # same size, shifted ids
    other = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), pad_token="<pad>"
    )
    student, teacher = tiny_model("llama"), tiny_model("llama", seed=1)
    before = _snapshot(student)
    kd = KdStageConfig(kind="logit", teacher=teacher, teacher_tokenizer=other)
    with pytest.raises(ValueError, match="same vocabulary.*different ids.*kind='sequence'"):
        run_srlm(student, tok, _tiny_config("sft,kd", kd=kd))
    assert _max_change(before, _snapshot(student)) == 0  # nothing trained
    with pytest.raises(ValueError, match="output sizes differ"):
        check_same_vocabulary(student, tok, tiny_model("llama", vocab_size=len(tok) + 8), tok)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="programmatic 'arithmetic' teacher has no logits"):
        KdStageConfig(kind="logit")
    with pytest.raises(ValueError, match="`divergence`"):
        KdStageConfig(divergence="kl")
    with pytest.raises(ValueError, match="multiple of `num_generations`"):
        RlStageConfig(num_generations=4, per_device_train_batch_size=6)
    with pytest.raises(ValueError, match="num_generations"):
        RlStageConfig(num_generations=1)
    with pytest.raises(ValueError, match="needs an `output_dir`"):
        SrlmConfig(handoff="disk")
    with pytest.raises(ValueError, match="`eval_batch_size`"):
        SrlmConfig(eval_batch_size=0)
    with pytest.raises(ValueError, match="name no SFTConfig field"):
        run_srlm(
            tiny_model("llama"), tiny_tokenizer(), _tiny_config("sft", sft=SftStageConfig(trainer_kwargs={"lr": 1}))
        )


def test_evaluation_batches_and_optional_base_eval():
    """`eval_batch_size` sets the generation batches (3 problems in batches of 2: two `generate` calls per
    evaluation); `eval_before=False` skips the base evaluation but still scores every stage."""
    tok, model = tiny_tokenizer(), tiny_model("llama")
    calls = []
    generate = model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    model.generate = counting_generate
    _, report = run_srlm(model, tok, _tiny_config([], eval_size=3, eval_batch_size=2, eval_max_new_tokens=2))
    assert calls == [2, 1] and report["eval_before"]["n"] == 3
    calls.clear()
    cfg = _tiny_config("sft", eval_size=3, eval_batch_size=3, eval_max_new_tokens=2, eval_before=False)
    _, report = run_srlm(model, tok, cfg)
    assert calls == [3] and "eval_before" not in report and report["stages"][0]["eval"]["n"] == 3


@pytest.mark.slow
def test_gguf_loaded_smollm2_can_be_fully_fine_tuned_and_saved(tmp_path):
    """The embedded SmolLM2 keeps transformers' GGUF quantizer after dequantization; without detaching it the
    Trainer refuses full fine-tuning and save_pretrained refuses to save."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.trainer_utils import validate_quantization_for_training

    from hf_plugins.models.smollm2 import SMOLLM2_GGUF, load_smollm2, smollm2_path
    from hf_plugins.recipes.srlm.pipeline import drop_gguf_quantizer

    raw = AutoModelForCausalLM.from_pretrained(smollm2_path(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    with pytest.raises(ValueError, match="purely quantized"):  # transformers' own GGUF load
        validate_quantization_for_training(raw)
    before = _snapshot(raw)
    drop_gguf_quantizer(raw)
    validate_quantization_for_training(raw)
    assert _max_change(before, _snapshot(raw)) == 0
    model, _ = load_smollm2()  # our loader detaches it already
    validate_quantization_for_training(model)
    assert _max_change(before, _snapshot(model)) == 0
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
