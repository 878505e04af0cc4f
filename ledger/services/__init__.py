"""Ledger writes, one module per use case; every name callers use is here, so `from ledger.services import X`
keeps working. The posting engine (`engine`: idempotency, locks, funds check, the hash chain link, retries) is
what every money movement goes through; see its docstring for the rules.

    errors           LedgerError and its kinds
    engine           the posting engine (_commit), request_fingerprint
    transfers        account_for_user, transfer
    grants           credit_grant (staff, with ledger.grant_credit), grant_signup_credit
    holds            hold_create, hold_release
    settlement       policy_check, settlement_post, settlement_post_many
    settlement_fast  their PostgreSQL paths (one SQL function call per settlement or per batch)
    withdrawals      withdrawal_request, withdrawal_complete, withdrawal_cancel
    earnings         pending earnings: earning_release, earning_forfeit, earnings_release_due (a sweep),
                     earnings_forfeit_contribution (the settlement pays them into their pending shard)
    bonds            bond_post, bond_return, bond_slash
    checkpoints      checkpoint_create
    anchors          anchor_checkpoint (each checkpoint's signed anchor, outside the database)
"""

from ledger.services.anchors import anchor_checkpoint
from ledger.services.bonds import bond_post, bond_return, bond_slash
from ledger.services.checkpoints import checkpoint_create
from ledger.services.earnings import (
    PendingPart,
    earning_forfeit,
    earning_release,
    earnings_forfeit_contribution,
    earnings_release_due,
    pending_total,
)
from ledger.services.engine import MAX_ATTEMPTS, request_fingerprint
from ledger.services.errors import (
    BondNotHeld,
    EarningNotPending,
    HoldNotOpen,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    LedgerError,
    NotAllowed,
    PolicyOutOfBounds,
    WithdrawalNotOpen,
)
from ledger.services.grants import GRANT_PERMISSION, credit_grant, grant_signup_credit
from ledger.services.holds import hold_create, hold_release
from ledger.services.settlement import (
    SETTLEMENT_BATCH_MAX,
    SettlementRequest,
    Share,
    policy_check,
    settlement_post,
    settlement_post_many,
)
from ledger.services.transfers import account_for_user, transfer
from ledger.services.withdrawals import withdrawal_cancel, withdrawal_complete, withdrawal_request

__all__ = [
    "BondNotHeld",
    "EarningNotPending",
    "PendingPart",
    "bond_post",
    "bond_return",
    "bond_slash",
    "earning_forfeit",
    "earning_release",
    "earnings_forfeit_contribution",
    "earnings_release_due",
    "pending_total",
    "GRANT_PERMISSION",
    "MAX_ATTEMPTS",
    "SETTLEMENT_BATCH_MAX",
    "HoldNotOpen",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InvalidRequest",
    "LedgerError",
    "NotAllowed",
    "PolicyOutOfBounds",
    "SettlementRequest",
    "Share",
    "WithdrawalNotOpen",
    "account_for_user",
    "anchor_checkpoint",
    "checkpoint_create",
    "credit_grant",
    "grant_signup_credit",
    "hold_create",
    "hold_release",
    "policy_check",
    "request_fingerprint",
    "settlement_post",
    "settlement_post_many",
    "transfer",
    "withdrawal_cancel",
    "withdrawal_complete",
    "withdrawal_request",
]
