"""Hypothesis drives random sequences of ledger operations against a plain in-memory model of the ledger and
checks after every step: postings sum to zero, balances equal their postings and the model, no user below zero,
replaying a key changes nothing, and the hash chain verifies."""

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ledger.calc.split import SplitPolicy, split_fee, to_fraction
from ledger.models import ChainHead
from ledger.services import (
    GRANT_PERMISSION,
    HoldNotOpen,
    IdempotencyConflict,
    InsufficientFunds,
    account_for_user,
    credit_grant,
    hold_create,
    hold_release,
    settlement_post,
    transfer,
    withdrawal_cancel,
    withdrawal_complete,
    withdrawal_request,
)
from ledger.verification import ledger_verify
from tests.factories import UserFactory
from tests.ledger.conftest import snapshot, wallet_balance

USERS = 4
amounts = st.integers(min_value=1, max_value=5_000_000)
who = st.integers(min_value=0, max_value=USERS - 1)


class LedgerMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        head = ChainHead.objects.filter(pk=1).first()
        self.start_seq = head.seq if head else 0
        self.staff = UserFactory(is_staff=True, permissions=[GRANT_PERMISSION])
        self.users = [UserFactory() for _ in range(USERS)]
        self.model = [0] * USERS  # what each wallet should hold
        self.calls = []  # (callable, outcome) for replays: outcome is a tx/hold/withdrawal id or an error class
        self.holds = {}  # hold key -> (payer index, amount), open ones only
        self.withdrawals = {}  # id -> (user index, amount), open ones only
        self.counter = 0
        self.grant_keys = []

    def key(self, prefix):
        self.counter += 1
        return f"{prefix}:{id(self)}:{self.counter}"

    def record(self, call):
        try:
            result = call()
        except InsufficientFunds as exc:
            self.calls.append((call, ("refused", exc.transaction.pk)))
            return None
        self.calls.append((call, ("ok", result.pk)))
        return result

    @rule(user=who, amount=amounts)
    def grant(self, user, amount):
        key = self.key("grant")
        self.record(
            lambda: credit_grant(user_id=self.users[user].pk, amount_micro=amount, granted_by=self.staff, key=key)
        )
        self.grant_keys.append(key)
        self.model[user] += amount

    @rule(src=who, dst=who, amount=amounts)
    def transfer(self, src, dst, amount):
        if src == dst:
            return
        key = self.key("transfer")
        a = account_for_user(user_id=self.users[src].pk).pk
        b = account_for_user(user_id=self.users[dst].pk).pk
        if self.record(lambda: transfer(key=key, legs=[(a, -amount), (b, amount)])) is not None:
            self.model[src] -= amount
            self.model[dst] += amount
        else:
            assert self.model[src] < amount

    @rule(payer=who, owner=who, fee=amounts, shares=st.dictionaries(who, st.integers(1, 9), max_size=3))
    def settle(self, payer, owner, fee, shares):
        key = self.key("settle")
        by_id = {self.users[i].pk: s for i, s in shares.items()}
        call = lambda: settlement_post(  # noqa: E731
            key=key,
            payer_user_id=self.users[payer].pk,
            fee_micro=fee,
            owner_user_id=self.users[owner].pk,
            contributor_shares=by_id,
        )
        if self.record(call) is None:
            assert self.model[payer] < fee
            return
        split = split_fee(fee, SplitPolicy(), {uid: to_fraction(s) for uid, s in by_id.items()})
        self.model[payer] -= fee
        self.model[owner] += split.owner + split.contributors_to_owner
        for i in shares:
            self.model[i] += split.contributors[self.users[i].pk]

    @rule(payer=who, amount=amounts)
    def hold(self, payer, amount):
        key = self.key("hold")
        if self.record(lambda: hold_create(key=key, payer_user_id=self.users[payer].pk, amount_micro=amount)):
            self.model[payer] -= amount
            self.holds[key] = (payer, amount)
        else:
            assert self.model[payer] < amount

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), owner=who)
    def close_hold(self, data, owner):
        key = data.draw(st.sampled_from(sorted(self.holds)))
        payer, amount = self.holds.pop(key)
        fee = data.draw(st.integers(0, amount))
        if data.draw(st.booleans()):
            self.record(lambda: hold_release(hold_key=key))
            self.model[payer] += amount
            return
        self.record(
            lambda: settlement_post(
                key=f"settle-{key}",
                hold_key=key,
                fee_micro=fee,
                owner_user_id=self.users[owner].pk,
                contributor_shares={},
            )
        )
        split = split_fee(fee, SplitPolicy(), {})
        self.model[payer] += amount - fee
        self.model[owner] += split.owner + split.contributors_to_owner
        with pytest.raises(HoldNotOpen):
            hold_release(hold_key=key)

    @rule(user=who, amount=st.integers(5_000_000, 12_000_000))
    def withdraw(self, user, amount):
        key = self.key("w")
        w = self.record(lambda: withdrawal_request(user=self.users[user], amount_micro=amount, key=key))
        if w is None:
            assert self.model[user] < amount
            return
        self.model[user] -= amount
        self.withdrawals[w.pk] = (user, amount)

    @precondition(lambda self: self.withdrawals)
    @rule(data=st.data())
    def close_withdrawal(self, data):
        wid = data.draw(st.sampled_from(sorted(self.withdrawals)))
        user, amount = self.withdrawals.pop(wid)
        if data.draw(st.booleans()):
            withdrawal_complete(withdrawal_id=wid, staff_user=self.staff)
        else:
            withdrawal_cancel(withdrawal_id=wid, staff_user=self.staff)
            self.model[user] += amount

    @precondition(lambda self: self.calls)
    @rule(data=st.data())
    def replay(self, data):
        call, outcome = data.draw(st.sampled_from(self.calls))
        before = snapshot()
        try:
            again = ("ok", call().pk)
        except InsufficientFunds as exc:
            again = ("refused", exc.transaction.pk)
        assert again == outcome
        assert snapshot() == before

    @precondition(lambda self: self.grant_keys)
    @rule(user=who, data=st.data())
    def conflicting_replay(self, user, data):
        key = data.draw(st.sampled_from(self.grant_keys))
        before = snapshot()
        with pytest.raises(IdempotencyConflict):
            credit_grant(user_id=self.users[user].pk, amount_micro=10**9, granted_by=self.staff, key=key)
        assert snapshot() == before

    @invariant()
    def ledger_is_sound(self):
        if not hasattr(self, "users"):
            return
        ledger_verify(since_seq=self.start_seq)  # chain, zero sums, balances == postings, nobody negative
        assert [wallet_balance(u) for u in self.users] == self.model
        assert all(balance >= 0 for balance in self.model)


@pytest.mark.django_db
def test_ledger_matches_its_model():
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
