from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ledger.calc.money import MAX_CREDITS, AmountError, format_credits, parse_credits
from ledger.models import Checkpoint, Posting, Withdrawal


@extend_schema_field({"type": "string", "pattern": r"^-?\d+\.\d{6}$", "example": "12.500000"})
class CreditsField(serializers.Field):
    """Micro-units inside, a decimal string of credits with 6 places outside ("12.500000")."""

    default_error_messages = {"invalid": "{message}"}

    def to_representation(self, value):
        return format_credits(value)

    def to_internal_value(self, data):
        try:
            return parse_credits(data)
        except AmountError as exc:
            self.fail("invalid", message=str(exc))


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "pattern": r"^\s*([0-9]+\.?[0-9]{0,6}|\.[0-9]{1,6})\s*$", "example": "12.5"},
            {"type": "integer", "minimum": 0, "maximum": MAX_CREDITS, "example": 12},
        ],
        "description": f"Credits as plain digits with at most one '.' and 6 decimal places (a string), or a whole "
        f"number of credits; at most {MAX_CREDITS:,}. Fractions as JSON numbers are refused (they are floats).",
    }
)
class CreditsInputField(CreditsField):
    """A credit amount given by a caller: the one strict parser (ledger.calc.money.parse_credits), micro-units in."""


class BalanceSerializer(serializers.Serializer):
    currency = serializers.CharField()
    balance = CreditsField(help_text="Credits in the wallet plus withdrawals waiting for payout.")
    available = CreditsField(help_text="Credits that can be spent or withdrawn now.")
    earnings_pending = CreditsField(
        help_text="Earnings in their review period (not in the balance): they become available on their date, "
        "unless a curator confirms the contribution they came from harmful."
    )
    earnings_next_release_at = serializers.DateTimeField(
        allow_null=True, help_text="When the next of those earnings becomes available (null: none pending)."
    )


class StatementLineSerializer(serializers.ModelSerializer):
    posting_id = serializers.IntegerField(
        source="id", help_text="This line's own id (a transaction can pay you twice)."
    )
    transaction_id = serializers.IntegerField(source="transaction.id")
    seq = serializers.IntegerField(source="transaction.seq")
    kind = serializers.CharField(source="transaction.kind")
    memo = serializers.CharField(source="transaction.memo")
    created_at = serializers.DateTimeField(source="transaction.created_at")
    hash = serializers.CharField(source="transaction.hash")
    amount = CreditsField()
    running_balance = CreditsField()
    model = serializers.SerializerMethodField()

    class Meta:
        model = Posting
        fields = [
            "posting_id",
            "transaction_id",
            "seq",
            "kind",
            "memo",
            "amount",
            "running_balance",
            "model",
            "created_at",
            "hash",
        ]

    def get_model(self, posting) -> str | None:
        return posting.transaction.metadata.get("model")


class CheckpointSerializer(serializers.ModelSerializer):
    class Meta:
        model = Checkpoint
        fields = ["id", "first_seq", "last_seq", "tx_count", "merkle_root", "last_hash", "created_at"]


class ProofStepSerializer(serializers.Serializer):
    side = serializers.ChoiceField(choices=["left", "right"])
    hash = serializers.CharField()


class AnchorSerializer(serializers.Serializer):
    """The newest signed root of the chain, signed outside the database (README, "Signed anchors")."""

    sequence = serializers.IntegerField()
    prev_anchor = serializers.CharField(help_text="SHA-256 of the anchor before this one.")
    checkpoint_first_seq = serializers.IntegerField()
    last_seq = serializers.IntegerField(help_text="The chain is signed up to this transaction seq.")
    last_tx_id = serializers.IntegerField()
    tx_count = serializers.IntegerField()
    root = serializers.CharField(help_text="Chain hash of transaction last_seq (it commits to every earlier one).")
    merkle_root = serializers.CharField()
    created_at = serializers.CharField()
    key_id = serializers.CharField()
    public_key = serializers.CharField(help_text="Ed25519 public key, raw, hex.")
    signature = serializers.CharField(help_text="Ed25519 signature, hex.")
    signature_algorithm = serializers.CharField()


class ProofSerializer(serializers.Serializer):
    transaction_id = serializers.IntegerField()
    seq = serializers.IntegerField()
    hash = serializers.CharField()
    prev_hash = serializers.CharField()
    content = serializers.CharField(help_text="Canonical JSON of the transaction and its postings.")
    hash_algorithm = serializers.CharField()
    checkpoint = CheckpointSerializer(allow_null=True, help_text="Null until the next checkpoint covers it.")
    leaf_index = serializers.IntegerField(allow_null=True)
    merkle_proof = ProofStepSerializer(many=True, allow_null=True)
    merkle_algorithm = serializers.CharField()
    anchor = AnchorSerializer(allow_null=True, help_text="The newest signed root; null before the first checkpoint.")


class WithdrawalSerializer(serializers.ModelSerializer):
    amount = CreditsField()

    class Meta:
        model = Withdrawal
        fields = ["id", "amount", "status", "reason", "created_at", "closed_at"]
        read_only_fields = ["id", "status", "reason", "created_at", "closed_at"]


class WithdrawalCreateSerializer(serializers.Serializer):
    amount = CreditsInputField(help_text='Credits to withdraw, as a decimal string such as "12.50".')
