"""SFT and GRPO data: prompts in one of our styles, and (for SFT) assistant answers whose reasoning is written
from the checker's own evidence, ending in `\\boxed{label}` (the target text is the checker's evidence trace
followed by the boxed label).

Only proved labels are used. Rows are plain dicts in TRL's conversational format; `to_dataset` wraps them in a
`datasets.Dataset` (imported lazily: the GPU image has no `datasets`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .certificates import (
    ConstantCertificate,
    DualCertificate,
    GramCertificate,
    NewtonCertificate,
    PointCertificate,
    SquaresCertificate,
    TheoryCertificate,
    UnivariateCertificate,
)
from .checker import CheckerConfig, Verdict, check_polynomial
from .generators import SosItem
from .polynomial import Polynomial, format_number
from .prompts import build_prompt


__all__ = ["make_grpo_rows", "make_sft_rows", "reasoning_trace", "to_dataset"]

_MAX_SHOWN = 6  # squares / pivots quoted in a trace; longer lists are summarised


def _point_text(point) -> str:
    return "(" + ", ".join(format_number(x) for x in point) + ")"


def reasoning_trace(p: Polynomial, evidence, method: str = "") -> str:
    """Step-by-step text from an evidence object (a certificate of `hf_plugins.sos.certificates`)."""
    n_vars = len(p.occurring_variables())
    lines = [f"Step 1: the polynomial has total degree {p.degree} in {n_vars} variable{'s' * (n_vars != 1)}."]
    top = p.top_form()
    pure_neg = [
        i for i in range(p.nvars) if top.coefficient(tuple(p.degree if j == i else 0 for j in range(p.nvars))) < 0
    ]
    if isinstance(evidence, ConstantCertificate):
        lines.append(
            f"It is the constant {format_number(evidence.value)}, which is {'non' * (evidence.value >= 0)}negative."
        )
    elif isinstance(evidence, PointCertificate):
        if p.degree % 2:
            lines.append("The degree is odd, so the polynomial is unbounded below and cannot be a sum of squares.")
        elif pure_neg:
            lines.append(
                f"The pure power x{pure_neg[0] + 1}^{p.degree} has a negative coefficient, so p goes to minus "
                "infinity along that axis."
            )
        elif "top" in evidence.reason:
            lines.append("The top-degree part is negative along some direction, so p is unbounded below.")
        else:
            lines.append("The degree is even and the leading pure powers are positive; search for a negative value.")
        lines.append(
            f"Step 2: at x = {_point_text(evidence.point)} the polynomial equals {format_number(evidence.value)}, "
            "which is negative. A sum of squares is never negative, so p is not SoS."
        )
    elif isinstance(evidence, NewtonCertificate):
        lines.append("No negative value is visible; look at which monomials a sum of squares can produce.")
        lines.append("Step 2: " + evidence.describe() + ". So p is not SoS.")
    elif isinstance(evidence, DualCertificate):
        lines.append("No negative value is found and every monomial can come from a square; test the moments.")
        lines.append("Step 2: " + evidence.describe() + ". So p is not SoS.")
    elif isinstance(evidence, UnivariateCertificate):
        lines.append("Step 2: " + evidence.describe() + ". So p is SoS.")
    elif isinstance(evidence, GramCertificate):
        N = len(evidence.basis)
        if p.degree == 2:
            lines.append(
                "Step 2: p is a quadratic, so it is SoS exactly when its matrix [[c, b^T/2], [b/2, H]] is positive "
                "semidefinite."
            )
        else:
            lines.append(
                f"Step 2: write p = z^T Q z with z the {N} monomials of degree at most {p.degree // 2} allowed by the "
                "Newton polytope, and look for a positive semidefinite Q."
            )
        squares = evidence.squares(p.nvars)
        pivots = ", ".join(f"{float(d):.4g}" for d, _ in squares[:_MAX_SHOWN])
        more = "" if len(squares) <= _MAX_SHOWN else ", ..."
        lines.append(
            f"Step 3: an exact LDL^T factorisation of Q has positive pivots (about {pivots}{more}), so Q is positive "
            f"semidefinite and p is a sum of {len(squares)} weighted squares. So p is SoS."
        )
    elif isinstance(evidence, SquaresCertificate):
        shown = " + ".join(
            f"{format_number(w)}*({q})^2" if w != 1 else f"({q})^2"
            for w, q in zip(evidence.weights[:3], evidence.squares[:3])
        )
        more = "" if len(evidence.squares) <= 3 else " + ..."
        lines.append(f"Step 2: p can be written as a sum of {len(evidence.squares)} squares: p = {shown}{more}.")
        lines.append("So p is SoS.")
    elif isinstance(evidence, TheoryCertificate):
        lines.append("Step 2: " + evidence.describe() + ".")
        lines.append(
            "Its x^2*y^2 coefficient is negative and can only come from a diagonal Gram entry. So p is not SoS."
        )
    else:
        raise TypeError(f"no trace for evidence of type {type(evidence).__name__}")
    return "\n".join(lines)


def _proved(item: SosItem, config: CheckerConfig | None) -> tuple[Verdict | None, object]:
    """(checker verdict, evidence used): the checker's evidence when it proves the item's label, otherwise the
    item's own construction certificate (which the tests verify independently)."""
    verdict = check_polynomial(item.polynomial, config) if config is not None else None
    if verdict is not None and verdict.proved_label is not None:
        if verdict.proved_label != item.label:
            raise AssertionError(f"checker and generator disagree on {item.text!r}: {verdict.label} vs {item.label}")
        if verdict.evidence is not None:  # "odd degree" with no point found proves the label but quotes nothing
            return verdict, verdict.evidence
    return verdict, item.certificate


def make_sft_rows(
    items: Sequence[SosItem], style: str = "reasoning", checker_config: CheckerConfig | None = None
) -> list[dict]:
    """`{"messages": [user prompt, assistant trace + boxed label], "label", "class", "evidence"}` per item. With a
    `checker_config` the checker runs on each item and its evidence writes the trace when it proves the label;
    otherwise (no config, or the checker undecided) the item's construction certificate does (fast). `evidence`
    says which: `"checker: <method>"` or `"certificate"`."""
    rows = []
    for item in items:
        verdict, evidence = _proved(item, checker_config)
        source = "certificate" if verdict is None or evidence is not verdict.evidence else f"checker: {verdict.method}"
        trace = reasoning_trace(item.polynomial, evidence) if evidence is not None else ""
        answer = f"{trace}\n\nFinal answer: \\boxed{{{item.label}}}".strip()
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": build_prompt(item.text, style)},
                    {"role": "assistant", "content": answer},
                ],
                "label": item.label,
                "class": item.cls,
                "evidence": source,
            }
        )
    return rows


def make_grpo_rows(items: Sequence[SosItem], style: str = "reasoning") -> list[dict]:
    """`{"prompt": [user message], "proved_label", "class"}` per item, for `GRPOTrainer` with `sos_reward`."""
    return [
        {
            "prompt": [{"role": "user", "content": build_prompt(it.text, style)}],
            "proved_label": it.label,
            "class": it.cls,
        }
        for it in items
    ]


def to_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)
