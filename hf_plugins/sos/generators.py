"""Seeded generators for every class of SoS-1K's Table 3 (arXiv 2502.20545, §2.2 and App. E), with labels that
are *proved* by a certificate carried with each item, in exact rational arithmetic end to end. The constructions
are in `families.py`.

| class (ours)                         | Table 3 set | label | certificate                                  |
|--------------------------------------|-------------|-------|----------------------------------------------|
| odd_degree                           | 1           | 0     | exact point (odd top form, t doubled)        |
| sos_expanded / sos_squared           | 2a / 2.1a   | 1     | the squares                                  |
| sos_expanded_negative / ..._squared_ | 2b / 2.1b   | 0     | exact point x0: p(x0) = s(x0) - C < 0        |
| quadratic / quadratic_negative       | 3.1a / b    | 1 / 0 | squares of L^T [1; x] / exact point          |
| quartic_2var / ..._negative          | 3.2a / b    | 1 / 0 | squares / exact point                        |
| quartic_form / ..._negative          | (ternary quartic forms, Hilbert's (3, 4) case) | squares / point |
| quadratic_quartic / ..._negative     | 4a / b      | 1 / 0 | explicit squares (below) / exact point       |
| gram_dense, gram_sparse, gram_low_rank, gram_ill_conditioned (+ _negative) | 5.1-5.4 a / b | squares of Q = L L^T / point |
| nonneg_not_sos                       | (extra)     | 0     | Motzkin theory certificate                   |

Negative Gram items use Q = L L^T - s w w^T with s chosen so that p(x0) = -delta at a random rational x0: Q is
indefinite and the point is exact, so no "non-PD Q means not SoS" shortcut is needed (an indefinite Q does not make
p non-SoS: Gram matrices are not unique). Surface cues are removed: the shift C of the `sos_*_negative` classes is
drawn at random between s(x0) and s(0), so their constant term is positive like that of the SoS classes (and
`sos_squared` prints a subtracted constant too: one square is w^2 + m, minus c <= m^2), and no
`*_negative` item is kept with a negative constant term (p(0) < 0 would give the label away to the rule "constant
<= 0 means not SoS", which scored 0.84 on the released SoS1 file). `generate_balanced` draws equally many items of
each label, spread evenly over the classes of that label.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from .certificates import PointCertificate, certificate_from_dict
from .families import build
from .parse import parse_polynomial
from .polynomial import Polynomial


__all__ = [
    "CLASS_LABELS",
    "CLASS_TABLE3",
    "GeneratorConfig",
    "SosItem",
    "generate_balanced",
    "generate_item",
    "generate_items",
    "generate_splits",
]

CLASS_LABELS: dict[str, int] = {
    "odd_degree": 0,
    "sos_expanded": 1,
    "sos_expanded_negative": 0,
    "sos_squared": 1,
    "sos_squared_negative": 0,
    "quadratic": 1,
    "quadratic_negative": 0,
    "quartic_2var": 1,
    "quartic_2var_negative": 0,
    "quartic_form": 1,
    "quartic_form_negative": 0,
    "quadratic_quartic": 1,
    "quadratic_quartic_negative": 0,
    "gram_dense": 1,
    "gram_dense_negative": 0,
    "gram_sparse": 1,
    "gram_sparse_negative": 0,
    "gram_low_rank": 1,
    "gram_low_rank_negative": 0,
    "gram_ill_conditioned": 1,
    "gram_ill_conditioned_negative": 0,
    "nonneg_not_sos": 0,
}
CLASS_TABLE3: dict[str, str] = {
    "odd_degree": "1",
    "sos_expanded": "2a",
    "sos_expanded_negative": "2b",
    "sos_squared": "2.1a",
    "sos_squared_negative": "2.1b",
    "quadratic": "3.1a",
    "quadratic_negative": "3.1b",
    "quartic_2var": "3.2a",
    "quartic_2var_negative": "3.2b",
    "quartic_form": "ternary quartic forms (extra)",
    "quartic_form_negative": "ternary quartic forms (extra)",
    "quadratic_quartic": "4a",
    "quadratic_quartic_negative": "4b",
    "gram_dense": "5.1a",
    "gram_dense_negative": "5.1b",
    "gram_sparse": "5.2a",
    "gram_sparse_negative": "5.2b",
    "gram_low_rank": "5.3a",
    "gram_low_rank_negative": "5.3b",
    "gram_ill_conditioned": "5.4a",
    "gram_ill_conditioned_negative": "5.4b",
    "nonneg_not_sos": "extra (Motzkin family)",
}


@dataclass
class GeneratorConfig:
    """Size knobs shared by all classes.

    Args:
        num_vars (`int`, defaults to `3`): variables (the paper ranges over 2-10). Quadratic-quartic and quartic
            forms use it too; `quartic_2var` always uses 2 and `quartic_form` 3 (their Hilbert cases).
        degree (`int`, defaults to `4`): total degree (even; `odd_degree` uses degree + 1).
        num_terms (`int`, defaults to `6`): random terms for `odd_degree`, squares for `sos_*`, Gram basis size
            for `gram_*`.
        max_chars (`int`, *optional*): regenerate with fewer terms until the printed text is at most this long.
        coef_max (`int`, defaults to `3`): integer entries of L, q_i and the like lie in [-coef_max, coef_max].
        style (`str`, defaults to `"x1"`): `"x1"` or `"x(1)"` variable names in the printed text.
    """

    num_vars: int = 3
    degree: int = 4
    num_terms: int = 6
    max_chars: int | None = None
    coef_max: int = 3
    style: str = "x1"

    def __post_init__(self):
        for name in ("num_vars", "degree", "num_terms", "coef_max", "max_chars"):
            value = getattr(self, name)
            if not (_is_int(value) or (name == "max_chars" and value is None)):
                raise ValueError(f"`{name}` must be an integer, got {value!r}")
        if self.num_vars < 1:
            raise ValueError(f"`num_vars` must be >= 1, got {self.num_vars}")
        if self.degree < 2 or self.degree % 2:
            raise ValueError(f"`degree` must be an even integer >= 2, got {self.degree}")
        if self.num_terms < 1:
            raise ValueError(f"`num_terms` must be >= 1, got {self.num_terms}")
        if self.coef_max < 1:
            raise ValueError(f"`coef_max` must be >= 1, got {self.coef_max}")
        if self.style not in ("x1", "x(1)"):
            raise ValueError(f"`style` must be 'x1' or 'x(1)', got {self.style!r}")
        if self.max_chars is not None and self.max_chars < 10:
            raise ValueError(f"`max_chars` must be >= 10 or None, got {self.max_chars}")


@dataclass
class SosItem:
    """One generated polynomial with its proved label and the certificate that proves it."""

    polynomial: Polynomial
    text: str
    label: int
    cls: str
    certificate: object
    meta: dict = field(default_factory=dict)

    def verify(self) -> bool:
        """Re-check the certificate against the printed text (parsed again, exactly)."""
        p = parse_polynomial(self.text)
        ok = self.certificate.verify(p)
        proves = self.certificate.proves
        return ok and (proves == "sos") == (self.label == 1)

    def to_dict(self) -> dict:
        return {
            "polynomial": self.text,
            "label": self.label,
            "class": self.cls,
            "table3": CLASS_TABLE3[self.cls],
            "certificate": self.certificate.to_dict(),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SosItem:
        return cls(
            parse_polynomial(d["polynomial"]), d["polynomial"], int(d["label"]), d["class"],
            certificate_from_dict(d["certificate"]), d.get("meta", {}),
        )  # fmt: skip


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_count(name: str, value) -> None:
    if not (_is_int(value) and value >= 0):
        raise ValueError(f"`{name}` must be an integer >= 0, got {value!r}")


def _check_classes(classes) -> list[str]:
    """`classes` as a list (None: every class); a string or an empty list raises instead of meaning something else."""
    if classes is None:
        return list(CLASS_LABELS)
    if isinstance(classes, str) or not classes:
        raise ValueError(
            f"`classes` must be a non-empty list of class names (None: every class), got {classes!r}; choose from "
            f"{sorted(CLASS_LABELS)}"
        )
    return list(classes)


def generate_item(cls: str, seed: int = 0, config: GeneratorConfig | None = None) -> SosItem:
    """One item of class `cls` (see `CLASS_LABELS`), deterministic in (`cls`, `seed`, `config`)."""
    if cls not in CLASS_LABELS:
        raise ValueError(f"unknown class {cls!r}; choose from {sorted(CLASS_LABELS)}")
    _check_count("seed", seed)
    config = config or GeneratorConfig()
    if not isinstance(config, GeneratorConfig):
        raise TypeError(f"`config` must be a GeneratorConfig, got {type(config).__name__}")
    rng = np.random.default_rng([seed, sorted(CLASS_LABELS).index(cls)])
    cfg = config
    for attempt in range(60):
        built = build(cls, rng, cfg)
        if built is None:
            continue
        p, text, cert = built
        if p.is_zero or (isinstance(cert, PointCertificate) and not cert.verify(p)):
            continue  # an exact point that is not negative proves nothing: build another item
        if cls.endswith("_negative") and p.constant_term() < 0:
            continue  # p(0) < 0 would give the label away (no SoS item has a negative constant term)
        if cfg.max_chars is not None and len(text) > cfg.max_chars:
            if attempt % 3 == 2 and cfg.num_terms > 1:
                cfg = GeneratorConfig(**{**cfg.__dict__, "num_terms": max(1, cfg.num_terms - 1)})
            continue
        meta = {"seed": seed, "num_vars": p.nvars, "degree": p.degree, "chars": len(text)}
        return SosItem(p, text, CLASS_LABELS[cls], cls, cert, meta)
    raise ValueError(
        f"could not generate a {cls!r} item within max_chars={config.max_chars}; raise `max_chars` or lower "
        "`num_terms` / `num_vars` / `degree`"
    )


def generate_items(
    classes: list[str] | None = None, per_class: int = 10, seed: int = 0, config: GeneratorConfig | None = None
) -> list[SosItem]:
    """`per_class` distinct items per class (deduplicated by the canonical exact polynomial); `classes=None` takes
    every class."""
    classes = _check_classes(classes)
    _check_count("per_class", per_class)
    _check_count("seed", seed)
    items, seen = [], set()
    for cls in classes:
        got, s = 0, 0
        while got < per_class:
            item = generate_item(cls, seed=seed * 1_000_003 + s, config=config)
            s += 1
            key = item.polynomial.to_str(spaces=False)
            if key in seen:
                if s > per_class * 20:
                    raise ValueError(f"class {cls!r} keeps producing duplicates; enlarge the sizes")
                continue
            seen.add(key)
            items.append(item)
            got += 1
    return items


def generate_splits(
    classes: list[str] | None = None,
    train_per_class: int = 20,
    test_per_class: int = 5,
    seed: int = 0,
    config: GeneratorConfig | None = None,
) -> tuple[list[SosItem], list[SosItem]]:
    """Disjoint train and test splits: separate seed streams, and any test polynomial equal to a training one
    is dropped."""
    train = generate_items(classes, train_per_class, seed=2 * seed, config=config)
    seen = {it.polynomial.to_str(spaces=False) for it in train}
    test = [it for it in generate_items(classes, test_per_class, seed=2 * seed + 1, config=config)
            if it.polynomial.to_str(spaces=False) not in seen]  # fmt: skip
    return train, test


def generate_balanced(
    per_label: int, classes: list[str] | None = None, seed: int = 0, config: GeneratorConfig | None = None
) -> list[SosItem]:
    """`per_label` items labelled 1 and `per_label` labelled 0, each label's items spread as evenly as possible over
    its classes in `classes` (default: all; the first classes of a label get one more when it does not divide)."""
    classes = _check_classes(classes)
    _check_count("per_label", per_label)
    items = []
    for label in (1, 0):
        own = [c for c in classes if CLASS_LABELS[c] == label]
        if not own:
            raise ValueError(f"`classes` has no class labelled {label}; a balanced set needs both labels")
        for i, cls in enumerate(own):
            k = per_label // len(own) + (i < per_label % len(own))
            if k:
                items += generate_items([cls], k, seed=seed, config=config)
    return items
