"""Logit-level KD helpers: the divergence TRL's distillation trainers minimise, in our names, and the
same-vocabulary check that must pass before any logit matching."""

from __future__ import annotations

import torch

from .config import DIVERGENCES


__all__ = ["check_same_vocabulary", "logit_kd_loss"]


def logit_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    divergence: str = "reverse_kl",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token divergence between next-token distributions, averaged over unmasked tokens.

    With p_S = softmax(student / T), p_T = softmax(teacher / T) and beta = DIVERGENCES[divergence]:
    `forward_kl` = KL(p_T || p_S), `reverse_kl` = KL(p_S || p_T), `jsd` = 0.5 KL(p_T || m) + 0.5 KL(p_S || m) with
    m = (p_T + p_S) / 2 (the generalised JSD of GKD, arXiv 2306.13649, at beta = 0.5). This is what TRL's
    `DistillationTrainer` / `GKDTrainer` minimise for `beta = DIVERGENCES[divergence]`; we use it for logging and
    as the reference in tests.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"`divergence` must be one of {sorted(DIVERGENCES)}, got {divergence!r}")
    beta = DIVERGENCES[divergence]
    log_s = torch.log_softmax(student_logits / temperature, dim=-1)
    log_t = torch.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0.0:
        per_token = (log_t.exp() * (log_t - log_s)).sum(-1)
    elif beta == 1.0:
        per_token = (log_s.exp() * (log_s - log_t)).sum(-1)
    else:
        log_m = torch.logsumexp(
            torch.stack(
                [
                    log_t + torch.log(torch.tensor(beta, dtype=log_t.dtype)),
                    log_s + torch.log1p(torch.tensor(-beta, dtype=log_s.dtype)),
                ]
            ),
            dim=0,
        )
        kl_t = (log_t.exp() * (log_t - log_m)).sum(-1)
        kl_s = (log_s.exp() * (log_s - log_m)).sum(-1)
        per_token = beta * kl_t + (1 - beta) * kl_s
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def _describe(model, tokenizer) -> str:
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return f"{name} (vocabulary {len(tokenizer)})"


def check_same_vocabulary(student, student_tokenizer, teacher, teacher_tokenizer) -> None:
    """Raise `ValueError` unless the two tokenizers map every token to the same id, share special tokens, and the
    two models' output sizes match. TRL only compares `config.vocab_size`, which two different tokenizers of the
    same size pass silently."""
    problems = []
    if student_tokenizer is not teacher_tokenizer:
        if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
            problems.append("the tokenizers map tokens to different ids")
        for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
            if getattr(student_tokenizer, attr) != getattr(teacher_tokenizer, attr):
                problems.append(f"different {attr}")
    s_vocab = student.get_output_embeddings().weight.shape[0]
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    if s_vocab != t_vocab:
        problems.append(f"output sizes differ ({s_vocab} vs {t_vocab})")
    if problems:
        raise ValueError(
            f"logit-level KD needs the same vocabulary in student {_describe(student, student_tokenizer)} and "
            f"teacher {_describe(teacher, teacher_tokenizer)}: {'; '.join(problems)}. Use kind='sequence' "
            "(teacher-written solutions, any vocabulary) instead."
        )
