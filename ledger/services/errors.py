"""What the ledger's services raise: LedgerError and its kinds, each with the `code` the API answers with."""

from __future__ import annotations

from ledger.calc.money import format_credits
from ledger.models import Transaction


class LedgerError(Exception):
    code = "ledger_error"


class InvalidRequest(LedgerError, ValueError):
    code = "invalid"


class NotAllowed(LedgerError, PermissionError):
    """The acting user lacks the permission this needs (e.g. ledger.grant_credit); nothing was written."""

    code = "not_allowed"


class IdempotencyConflict(LedgerError):
    code = "idempotency_conflict"


class InsufficientFunds(LedgerError):
    """Not enough credit. The attempt is recorded as a rejected transaction (`transaction`), so replaying its key
    fails the same way."""

    code = "insufficient_funds"

    def __init__(self, tx: Transaction):
        self.transaction = tx
        info = tx.metadata.get("rejected", {})
        self.account_id = info.get("account_id")
        self.balance = info.get("balance", 0)
        self.needed = info.get("needed", 0)
        super().__init__(
            f"Not enough credit: the account has {format_credits(self.balance)} credits and this needs "
            f"{format_credits(self.needed)}."
        )


class HoldNotOpen(LedgerError):
    code = "hold_not_open"


class WithdrawalNotOpen(LedgerError):
    code = "withdrawal_not_open"


class EarningNotPending(LedgerError):
    code = "earning_not_pending"


class BondNotHeld(LedgerError):
    code = "bond_not_held"


class PolicyOutOfBounds(LedgerError, ValueError):
    code = "policy_out_of_bounds"
