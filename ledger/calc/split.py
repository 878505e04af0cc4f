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

    def __post_init__(self) -> None:
        parts = (self.owner_bp, self.contributors_bp, self.platform_bp)
        if any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in parts):
            raise SplitError("Policy parts must be whole, non-negative basis points.")
        if sum(parts) != BASIS_POINTS:
            raise SplitError(f"Policy parts add up to {sum(parts)} basis points, not {BASIS_POINTS}.")
        if not self.version:
            raise SplitError("A policy needs a version so the split can be recomputed later.")

    def as_dict(self) -> dict:
        return {
            "version": self.version,
            "owner_bp": self.owner_bp,
            "contributors_bp": self.contributors_bp,
            "platform_bp": self.platform_bp,
        }


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


def split_fee(fee: int, policy: SplitPolicy, shares: Mapping[int, Fraction | int] | None) -> Split:
    """Owner / contributors / platform by the policy (largest remainder over the three parts, in that order),
    then the contributors' part by share (largest remainder, ties to the lower user id)."""
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
