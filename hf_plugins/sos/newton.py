"""The exact "not SoS" tests the Newton polytope gives, and the pruning of the Gram basis.

If p = sum q_i^2 then every q_i is supported in the integer points of N(p)/2, N(p) = conv(supp p) (Reznick; see
`lattice.py`). So with B those points: a monomial of p outside B+B, or one reachable only as 2*beta while its
coefficient is negative (Q_beta,beta >= 0), proves p is not SoS.
"""

from __future__ import annotations

from .certificates import NewtonCertificate
from .polynomial import Exponent, Polynomial


__all__ = ["newton_certificate", "prune_diagonal"]


def _pairs(alpha: Exponent, basis_set: set[Exponent]):
    for b in basis_set:
        o = tuple(a - x for a, x in zip(alpha, b))
        if o in basis_set:
            yield b, o


def newton_certificate(p: Polynomial, basis: list[Exponent]) -> NewtonCertificate | None:
    """A monomial of p outside B+B, or only diagonally reachable with a negative coefficient; None if none."""
    bset = set(basis)
    for alpha, c in sorted(p.terms.items()):
        pairs = list(_pairs(alpha, bset))
        if not pairs:
            return NewtonCertificate(alpha, "outside", list(basis))
        if c < 0 and all(b == o for b, o in pairs):
            return NewtonCertificate(alpha, "diagonal", list(basis))
    return None


def prune_diagonal(p: Polynomial, basis: list[Exponent]) -> list[Exponent]:
    """Drop beta whose square 2*beta is not a monomial of p and has no off-diagonal representation in B+B: then
    Q_beta,beta = 0 in every Gram matrix, so its whole row is zero (repeat until stable)."""
    current = set(basis)
    changed = True
    while changed:
        changed = False
        for b in sorted(current):
            two_b = tuple(2 * x for x in b)
            if two_b in p.terms:
                continue
            if any(x != o for x, o in _pairs(two_b, current)):
                continue
            current.discard(b)
            changed = True
    return sorted(current, key=lambda e: (sum(e), tuple(-k for k in e)))
