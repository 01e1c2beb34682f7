"""The three prompt styles of SoS-1K (plain, simple, reasoning), written in our own words, and the boxed-answer
parser.

Same information content as the official `data/prompts/SoS_{Plain,Simple,Reasoning}.yaml`, with its errors fixed
(docs/sos.md, "Choices, and differences from the official code"): the Gram basis is the monomials of degree <= d
(not 2d) including 1, a PSD (not PD) Gram matrix suffices, examples are consistent,
and the answer asks for `\\boxed{1}` / `\\boxed{0}` with the backslash.
"""

from __future__ import annotations

import re


__all__ = ["PROMPT_STYLES", "build_prompt", "parse_boxed_answer"]

_ANSWER = "Give your final answer as \\boxed{1} if the polynomial is a sum of squares and \\boxed{0} if it is not."

PLAIN = (
    "Decide whether the following polynomial is a sum of squares of real polynomials.\n\n{polynomial}\n\n" + _ANSWER
)

SIMPLE = (
    "Decide whether the following polynomial is a sum of squares (SoS) of real polynomials.\n\n{polynomial}\n\n"
    "Things worth checking:\n"
    "1. Is the highest total degree odd or even? An odd degree rules out SoS.\n"
    "2. Look at the highest-degree terms: a negative coefficient on a pure power x_i^(2d) rules out SoS.\n"
    "3. Special classes where nonnegative and SoS coincide: quadratics, quartics in one or two variables, quartic "
    "forms in at most three variables, and univariate polynomials of even degree.\n"
    "4. Try to find a point where the polynomial is negative; one such point rules out SoS.\n"
    "5. Try to write it directly as a sum of squared polynomials.\n"
    "6. Matrix methods: a positive semidefinite Gram matrix over a monomial vector proves SoS.\n\n" + _ANSWER
)

REASONING = (
    "Task: decide whether the polynomial below is a sum of squares (SoS), that is, whether p(x) = q_1(x)^2 + ... + "
    "q_m(x)^2 for some real polynomials q_1, ..., q_m. Every SoS polynomial is nonnegative everywhere; the converse "
    "is false in general (the Motzkin polynomial x1^4*x2^2 + x1^2*x2^4 - 3*x1^2*x2^2 + 1 is nonnegative but not "
    "SoS).\n\n"
    "Polynomial:\n{polynomial}\n\n"
    "Work through these steps and stop as soon as one of them settles the question.\n\n"
    "Step 1 - degree and leading terms. Find the total degree. If it is odd, p is not SoS: along some line it "
    "tends to minus infinity. If it is 2d, look at the pure powers x_i^(2d): a negative coefficient there is fatal "
    "too (send x_i to infinity with the other variables at 0). Negative top-degree cross terms are allowed: "
    "x1^4 - 2*x1^2*x2^2 + x2^4 = (x1^2 - x2^2)^2.\n\n"
    "Step 2 - search for a negative value. A single point with p < 0 proves p is not SoS. Check the constant term "
    "(the value at 0), the unit vectors and their negatives, small grids, and points suggested by the structure: for "
    "1.8*(x1 + 3)^2 + 1.2*(x2 + 2)^2 - 0.18 the point (-3, -2) gives -0.18. Compare the large positive and negative "
    "terms and try to make the negative ones win.\n\n"
    "Step 3 - classes where nonnegative means SoS (Hilbert, 1888): (a) quadratics in any number of variables; "
    "(b) polynomials of degree 4 in two variables; (c) homogeneous quartics in three variables; (d) univariate "
    "polynomials of even degree. In these classes it is enough to decide nonnegativity. For a quadratic "
    "c + b^T x + x^T H x, p is SoS exactly when the matrix [[c, b^T/2], [b/2, H]] is positive semidefinite.\n\n"
    "Step 4 - visible squares. If p is written, or can be regrouped, as a sum of squares, it is SoS. Expansion "
    "hides squares: (x1 - x1*x2)^2 + (x2^2 - x1^4)^2 expands into six terms with mixed signs. A sum of squares "
    "minus a positive constant is usually not SoS: look for a point where the squares are small.\n\n"
    "Step 5 - Gram matrix. Let z be the vector of monomials of degree at most d (half the degree of p), including "
    "1; only monomials whose doubles lie in the Newton polytope of p are needed. p is SoS exactly when p = z^T Q z "
    "for some positive semidefinite matrix Q (positive definite is not required). Q is not unique: match the "
    "coefficients of p and look for a choice with all eigenvalues >= 0. A negative coefficient on a monomial that "
    "can only arise as the square of one monomial of z (a diagonal entry of Q) rules out SoS; this is how one "
    "proves the Motzkin polynomial is not SoS.\n\n"
    "Explain your reasoning step by step, then " + _ANSWER[0].lower() + _ANSWER[1:]
)

PROMPT_STYLES = {"plain": PLAIN, "simple": SIMPLE, "reasoning": REASONING}


def build_prompt(polynomial: str, style: str = "reasoning") -> str:
    """The user message for `polynomial` (text) in one of `PROMPT_STYLES`."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"`style` must be one of {sorted(PROMPT_STYLES)}, got {style!r}")
    return PROMPT_STYLES[style].replace("{polynomial}", polynomial)


_BOX = re.compile(r"\\?boxed\s*\{")
_WRAPPERS = re.compile(r"^\\(?:text|textbf|mathbf|mathrm)\s*\{(.*)\}$", re.DOTALL)


def _box_contents(text: str) -> list[str]:
    out = []
    for m in _BOX.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def parse_boxed_answer(text: str | None) -> int | None:
    """The answer in the *last* `\\boxed{...}` (the backslash is optional, as in the official harness): 1 or 0,
    else None (invalid).

    Accepted inside the box: `1`, ` 1 ` (spaces), `\\text{1}` / `\\mathbf{1}` wrappers. Anything else in the last
    box, e.g. `\\boxed{2}` or `\\boxed{yes}`, makes the answer invalid even if an earlier box held 0 or 1 (the
    official regex would skip non-digit boxes; we count the last box, the model's final word).

        >>> parse_boxed_answer("first \\\\boxed{0}, on reflection \\\\boxed{1}")
        1
    """
    if not text:
        return None
    boxes = _box_contents(text)
    if not boxes:
        return None
    inner = boxes[-1].strip()
    for _ in range(3):
        m = _WRAPPERS.match(inner)
        if not m:
            break
        inner = m.group(1).strip()
    inner = inner.strip("$ ").strip()
    return int(inner) if inner in ("0", "1") else None
