"""The pure core: money parsing, exact splits, canonical hashing, Merkle proofs (no database)."""

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.calc.canonical import (
    chain_hash,
    jsonable,
    postings_json,
    transaction_content,
    transaction_content_parts,
)
from ledger.calc.merkle import inclusion_proof, merkle_root, verify_inclusion
from ledger.calc.money import (
    FLOAT_MESSAGE,
    MAX_MICRO,
    AmountError,
    format_credits,
    format_credits_exact,
    parse_credits,
)
from ledger.calc.split import SplitError, SplitPolicy, allocate, split_fee, to_fraction
from tests.ledger.amounts import BAD, GOOD


def test_parse_and_format_credits():
    assert parse_credits("1.5") == 1_500_000
    assert parse_credits("0.000001") == 1
    assert parse_credits(3) == 3_000_000
    assert format_credits(1_500_000) == "1.500000"
    assert format_credits(-1) == "-0.000001"
    assert format_credits(0) == "0.000000"


@pytest.mark.parametrize("bad", ["0.0000001", "abc", "NaN", "Infinity", 1.5, True])
def test_parse_credits_refuses_inexact_input(bad):
    with pytest.raises(AmountError):
        parse_credits(bad)


@pytest.mark.parametrize(("text", "message"), BAD, ids=[repr(t)[:30] for t, _ in BAD])
def test_parse_credits_refuses_anything_but_plain_digits_with_a_clear_message(text, message):
    with pytest.raises(AmountError) as refused:
        parse_credits(text)
    assert str(refused.value) == message


@pytest.mark.parametrize(("text", "micro"), GOOD)
def test_parse_credits_reads_plain_amounts_exactly(text, micro):
    assert parse_credits(text) == micro


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1, "Enter the amount without a sign; amounts are never negative."),
     (10**9 + 1, "The amount can be at most 1,000,000,000 credits."),
     (0.5, FLOAT_MESSAGE), (Decimal("1"), "Enter the amount in credits using only the digits 0-9 and at most one "
                                          "'.', such as 12.5.")],
)  # fmt: skip
def test_parse_credits_refuses_other_values(value, message):
    with pytest.raises(AmountError) as refused:
        parse_credits(value)
    assert str(refused.value) == message
    assert parse_credits(10**9) == MAX_MICRO


@given(st.integers(min_value=0, max_value=MAX_MICRO))
def test_formatted_amounts_parse_back_to_themselves(micro):
    assert parse_credits(format_credits(micro)) == micro


@given(st.from_regex(r"\A(?:[0-9]{1,13}\.?[0-9]{0,6}|\.[0-9]{1,6})\Z"))
def test_valid_strings_parse_to_their_exact_value_and_round_trip(text):
    exact = Fraction(text) * 1_000_000
    if exact > MAX_MICRO:
        with pytest.raises(AmountError):
            parse_credits(text)
        return
    micro = parse_credits(text)
    assert micro == exact
    assert Fraction(format_credits(micro)) == Fraction(text)


def test_default_split_of_one_credit():
    split = split_fee(1_000_000, SplitPolicy(), {1: Fraction(1, 3), 2: Fraction(1, 3), 3: Fraction(1, 3)})
    assert split.owner == 200_000
    assert split.platform == 100_000
    # 700,000 / 3 = 233,333.33 each: the one micro-unit left goes to the lowest user id.
    assert split.contributors == {1: 233_334, 2: 233_333, 3: 233_333}


def test_largest_remainder_gives_leftovers_to_the_largest_fractions():
    assert allocate(10, [("a", Fraction(1)), ("b", Fraction(2)), ("c", Fraction(3))]) == [
        ("a", 2),
        ("b", 3),
        ("c", 5),
    ]


def test_empty_shares_give_the_contributors_part_to_the_owner():
    split = split_fee(1000, SplitPolicy(), {})
    assert (split.owner, split.contributors, split.platform, split.contributors_to_owner) == (200, {}, 100, 700)


@pytest.mark.parametrize(
    ("parts", "message"),
    [((2000, 7000, 999), "add up to 9999"), ((-1, 9001, 1000), "non-negative")],
)
def test_policy_must_add_up(parts, message):
    with pytest.raises(SplitError, match=message):
        SplitPolicy(*parts)


def test_negative_shares_are_refused():
    with pytest.raises(SplitError, match="negative"):
        split_fee(100, SplitPolicy(), {1: Fraction(-1), 2: Fraction(2)})


@given(
    fee=st.integers(min_value=0, max_value=10**12),
    shares=st.dictionaries(st.integers(1, 50), st.fractions(min_value=0, max_value=100), max_size=8),
    owner_bp=st.integers(0, 10_000),
)
def test_split_parts_always_sum_to_the_fee(fee, shares, owner_bp):
    policy = SplitPolicy(owner_bp=owner_bp, contributors_bp=10_000 - owner_bp, platform_bp=0)
    positive = {uid: s for uid, s in shares.items() if s > 0}
    split = split_fee(fee, policy, positive)
    assert split.owner + split.platform + split.contributors_to_owner + sum(split.contributors.values()) == fee
    assert all(amount >= 0 for amount in split.contributors.values())
    if positive:  # each contributor is within one micro-unit of the exact share
        total = sum(positive.values())
        part = fee - split.owner - split.platform
        for uid, share in positive.items():
            assert abs(split.contributors[uid] - part * share / total) < 1


def test_jsonable_keeps_floats_exact_as_strings():
    assert jsonable({1: 0.1, "d": Decimal("2.50"), "f": Fraction(1, 3), "t": (1, 2)}) == {
        "1": "0.1",
        "d": "2.50",
        "f": "1/3",
        "t": [1, 2],
    }
    with pytest.raises(TypeError):
        jsonable({"x": object()})


def test_transaction_hash_covers_postings():
    base = dict(key="k", kind="transfer", status="posted", memo="", metadata={}, request_hash="r", created_at="t")
    one = chain_hash("00" * 32, transaction_content(**base, postings=[(1, -5), (2, 5)]))
    two = chain_hash("00" * 32, transaction_content(**base, postings=[(1, -6), (2, 6)]))
    assert one != two
    # order of postings does not matter: they are sorted by account id
    assert one == chain_hash("00" * 32, transaction_content(**base, postings=[(2, 5), (1, -5)]))


@given(st.lists(st.binary(min_size=32, max_size=32).map(bytes.hex), min_size=1, max_size=40), st.data())
def test_every_leaf_has_a_proof_that_verifies(hashes, data):
    root = merkle_root(hashes)
    index = data.draw(st.integers(0, len(hashes) - 1))
    proof = inclusion_proof(hashes, index)
    assert verify_inclusion(hashes[index], proof, root)
    forged = "ff" * 32 if hashes[index] != "ff" * 32 else "ee" * 32
    assert not verify_inclusion(forged, proof, root)


@given(
    postings=st.lists(
        st.tuples(st.integers(1, 10**12), st.integers(-(10**15), 10**15).filter(bool)), min_size=0, max_size=8
    ),
    memo=st.text(max_size=20),
    nested=st.booleans(),
)
def test_content_parts_around_the_postings_rebuild_the_hashed_content(postings, memo, nested):
    """The PostgreSQL settlement function hashes head + its own postings JSON + tail; that must be byte for byte
    what ledger_verify recomputes, even when the metadata itself holds a "postings" key."""
    metadata = {"postings": [], "request_hash": "x", "status": "posted"} if nested else {"model": "m"}
    common = dict(key="k", kind="settlement", memo=memo, metadata=metadata, request_hash="ab" * 32)
    common |= dict(created_at="2026-01-02T03:04:05.000006+00:00")
    head, tail = transaction_content_parts(status="posted", **common)
    whole = transaction_content(status="posted", postings=postings, **common)
    assert head + postings_json(postings) + tail == whole
    assert postings_json([(12, -5), (3, 7), (12, -9)]) == b"[[3,7],[12,-9],[12,-5]]"


@given(
    total=st.integers(0, 10**12),
    weights=st.lists(st.fractions(min_value=0, max_value=1000, max_denominator=97), min_size=1, max_size=7),
)
def test_allocate_matches_the_exact_fraction_definition(total, weights):
    """allocate works in integers over a common denominator; the answer must be the Fraction one exactly."""
    if sum(weights) == 0:
        return
    exact = [Fraction(total) * w / sum(weights) for w in weights]
    floors = [int(value) for value in exact]
    for i in sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))[: total - sum(floors)]:
        floors[i] += 1
    assert allocate(total, list(enumerate(weights))) == list(enumerate(floors))


@given(
    fee=st.integers(0, 10**12),
    shares=st.dictionaries(st.integers(1, 50), st.integers(0, 1000), min_size=1, max_size=7),
)
def test_whole_number_shares_split_as_their_fractions_do(fee, shares):
    """to_fraction keeps whole numbers as ints (the hot path); the split must be the Fraction one exactly."""
    if sum(shares.values()) == 0:
        return
    as_ints = split_fee(fee, SplitPolicy(), {uid: to_fraction(s) for uid, s in shares.items()})
    as_fractions = split_fee(fee, SplitPolicy(), {uid: Fraction(s) for uid, s in shares.items()})
    assert as_ints == as_fractions


@pytest.mark.parametrize(
    ("micro", "text"),
    [(0, "0.00"), (2_000, "0.002"), (1_000_000, "1.00"), (156, "0.000156"), (12_345_678, "12.345678"),
     (1_500_000, "1.50"), (-2_000, "-0.002")],
)  # fmt: skip
def test_format_credits_exact_drops_only_the_zeros_past_the_cents(micro, text):
    assert format_credits_exact(micro) == text
