"""Exact fee splits: integer micro-units, largest remainder, deterministic order. The parts always sum to the fee."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from math import lcm

BASIS_POINTS = 10_000


class SplitError(ValueError):
    """Inputs that cannot be split: negative or empty shares, a policy that does not add up."""


@dataclass(frozen=True)
class SplitPolicy:
    """Who gets what of a fee, in basis points (1/100 of a percent); the three parts add up to 10,000."""

    owner_bp: int = 2_000
    contributors_bp: int = 7_000
    platform_bp: int = 1_000
    version: str = "default-2025-1"
    # Where the part of the contributors' part that no row earned goes (the settlement's `unattributed` share).
    # None: the policy has no such part (older policies; the shares given are normalised over the whole part).
    unattributed_to: str | None = None

    def __post_init__(self) -> None:
        parts = (self.owner_bp, self.contributors_bp, self.platform_bp)
        if any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in parts):
            raise SplitError("Policy parts must be whole, non-negative basis points.")
        if sum(parts) != BASIS_POINTS:
            raise SplitError(f"Policy parts add up to {sum(parts)} basis points, not {BASIS_POINTS}.")
        if not self.version:
            raise SplitError("A policy needs a version so the split can be recomputed later.")
        if self.unattributed_to not in UNATTRIBUTED_DESTINATIONS:
            raise SplitError(f"The unattributed part can go to {', '.join(UNATTRIBUTED_DESTINATIONS[1:])} only.")

    def as_dict(self) -> dict:
        parts = {
            "version": self.version,
            "owner_bp": self.owner_bp,
            "contributors_bp": self.contributors_bp,
            "platform_bp": self.platform_bp,
        }
        if self.unattributed_to is not None:  # older policies keep their exact record (and request hash)
            parts["unattributed_to"] = self.unattributed_to
        return parts


UNATTRIBUTED_DESTINATIONS = (None, "owner")


def to_fraction(value: Fraction | Decimal | int | float | str) -> Fraction | int:
    """Exact value of a share. Floats go through their shortest decimal form (0.1 -> 1/10, not 2**-55 multiples).
    A whole number stays an int (an exact rational too, with .numerator and .denominator: cheaper on the hot
    path)."""
    if isinstance(value, bool):
        raise SplitError("A share cannot be a boolean.")
    if type(value) is int:
        return value
    if isinstance(value, float):
        value = repr(value)
    try:
        result = Fraction(value)
    except (ValueError, ZeroDivisionError, TypeError):
        raise SplitError(f"{value!r} is not a number.") from None
    return result


def allocate(total: int, weights: Sequence[tuple[Hashable, Fraction | int]]) -> list[tuple[Hashable, int]]:
    """Divides `total` micro-units in proportion to `weights` by largest remainder.

    Everyone first gets floor(total * weight / sum); the micro-units left over go one each to the largest
    remainders; ties go to the earlier entry in `weights` (callers pass a fixed order, e.g. by user id)."""
    if total < 0:
        raise SplitError("Cannot split a negative amount.")
    if not weights:
        raise SplitError("Nothing to split between.")
    if any(w < 0 for _, w in weights):
        raise SplitError("Shares cannot be negative.")
    # Integer arithmetic over a common denominator (exactly the same floors and remainder order as with Fractions,
    # several times faster: this runs on every settlement).
    denominator = lcm(*(w.denominator for _, w in weights))
    scaled = [w.numerator * (denominator // w.denominator) for _, w in weights]
    weight_sum = sum(scaled)
    if weight_sum == 0:
        raise SplitError("Shares add up to zero.")
    floors, remainders = [], []
    for weight in scaled:
        floor, remainder = divmod(total * weight, weight_sum)
        floors.append(floor)
        remainders.append(remainder)
    left = total - sum(floors)
    order = sorted(range(len(scaled)), key=lambda i: (-remainders[i], i))
    for i in order[:left]:
        floors[i] += 1
    return [(key, amount) for (key, _), amount in zip(weights, floors, strict=True)]


@dataclass(frozen=True)
class Split:
    owner: int
    contributors: dict[int, int]  # user id -> micro-units, ascending user id
    platform: int
    contributors_to_owner: int  # the contributors' part when there were no contributors to give it to
    unattributed: int = 0  # the part of the contributors' part that no row earned (to policy.unattributed_to)

    @property
    def owner_total(self) -> int:
        """All the owner receives: the owner's part, the contributors' part nobody could take, and the unattributed
        part (its only destination is the owner)."""
        return self.owner + self.contributors_to_owner + self.unattributed


def split_fee(
    fee: int,
    policy: SplitPolicy,
    shares: Mapping[int, Fraction | int] | None,
    unattributed: Fraction | int | None = None,
) -> Split:
    """Owner / contributors / platform by the policy (largest remainder over the three parts, in that order),
    then the contributors' part by share (largest remainder, ties to the lower user id).

    With a policy that names where the unattributed part goes (`unattributed_to`), `unattributed` (0..1) is the
    fraction of the contributors' part that no row earned: it is cut off first (largest remainder against the
    attributed part) and goes there; only the rest is split by share."""
    if (unattributed is not None) != (policy.unattributed_to is not None):
        raise SplitError("An unattributed share needs a policy that says where it goes, and such a policy needs one.")
    if unattributed is not None:
        return _split_unattributed(fee, policy, shares, unattributed)
    if fee < 0:
        raise SplitError("A fee cannot be negative.")
    owner, contributors_part, platform = (
        amount
        for _, amount in allocate(
            fee,
            [
                ("owner", policy.owner_bp),
                ("contributors", policy.contributors_bp),
                ("platform", policy.platform_bp),
            ],
        )
    )
    shares = {uid: share for uid, share in (shares or {}).items() if share != 0}
    if any(share < 0 for share in shares.values()):
        raise SplitError("Shares cannot be negative.")
    if not shares:
        return Split(owner=owner, contributors={}, platform=platform, contributors_to_owner=contributors_part)
    parts = allocate(contributors_part, [(uid, shares[uid]) for uid in sorted(shares)])
    return Split(owner=owner, contributors=dict(parts), platform=platform, contributors_to_owner=0)


def _split_unattributed(
    fee: int, policy: SplitPolicy, shares: Mapping[int, Fraction | int] | None, unattributed: Fraction | int
) -> Split:
    if not 0 <= unattributed <= 1:
        raise SplitError("The unattributed share must be between 0 and 1.")
    base = split_fee(fee, SplitPolicy(policy.owner_bp, policy.contributors_bp, policy.platform_bp, policy.version), {})
    cut_off = Fraction(unattributed)
    (_, attributed), (_, cut) = allocate(
        base.contributors_to_owner, [("attributed", 1 - cut_off), ("unattributed", cut_off)]
    )
    whole = SplitPolicy(owner_bp=0, contributors_bp=BASIS_POINTS, platform_bp=0, version=policy.version)
    paid = split_fee(attributed, whole, shares)
    return Split(
        owner=base.owner,
        contributors=paid.contributors,
        platform=base.platform,
        contributors_to_owner=paid.contributors_to_owner,
        unattributed=cut,
    )


def sub_part_amounts(
    amounts: Mapping[int, int], shares: Mapping[int, Fraction | int], sub_shares: Mapping[int, Fraction | int]
) -> dict[int, int]:
    """How much of each payee's amount came from a sub-part of the shares they were paid by: payee u was paid
    amounts[u] for shares[u], of which sub_shares[u] (<= shares[u]) was the sub-part (e.g. a settlement's retrieval
    part); the result is amounts[u] * sub_shares[u] / shares[u], rounded down (for display: the ledger paid the
    whole amount in one posting)."""
    out = {}
    for uid, sub in sub_shares.items():
        share = shares.get(uid, 0)
        if sub > 0 and share > 0:
            out[uid] = int(Fraction(amounts.get(uid, 0)) * Fraction(sub) / Fraction(share))
    return out
