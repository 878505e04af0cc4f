from rest_framework import serializers

from ledger.serializers import ProofSerializer


class ContributorShareSerializer(serializers.Serializer):
    username = serializers.CharField()
    share = serializers.FloatField(help_text="Share of the answer attributed to this contributor (0..1).")
    settled_share = serializers.FloatField(help_text="Share of the contributors' part of the fee paid to them.")
    amount = serializers.CharField(
        allow_null=True, help_text="Credits paid for this answer (decimal string, 6 places); null until settled."
    )


class AttributedRowSerializer(serializers.Serializer):
    record_id = serializers.IntegerField(help_text="The training row (datanet record) id.")
    contributor = serializers.CharField()
    score = serializers.FloatField(help_text="Influence on this answer (> 0: made it more likely).")
    text = serializers.CharField(
        allow_null=True,
        help_text="The row's text; null when the row belongs to a private datanet that you may not see (only its "
        "owner, its curators, staff and the row's contributor see the text).",
    )
    text_hidden = serializers.BooleanField(
        help_text="True when `text` is withheld because the row belongs to a private datanet that you may not see."
    )


class SpanSerializer(serializers.Serializer):
    start = serializers.IntegerField(help_text="First answer token of the verbatim span.")
    end = serializers.IntegerField(help_text="One past the last answer token.")
    record_id = serializers.IntegerField()
    char_start = serializers.IntegerField(allow_null=True, help_text="Character offset in the answer text.")
    char_end = serializers.IntegerField(allow_null=True)


class AttributionSerializer(serializers.Serializer):
    inference_id = serializers.IntegerField()
    status = serializers.CharField(help_text="pending, done, failed (retrying) or fallback (settled by row share).")
    method_version = serializers.CharField()
    unattributed = serializers.FloatField()
    span_coverage = serializers.FloatField()
    settlement = serializers.DictField(help_text="{status, note, transaction_id, rule}")
    contributors = ContributorShareSerializer(many=True)
    rows = AttributedRowSerializer(many=True)
    spans = SpanSerializer(many=True)


class ReceiptRowSerializer(serializers.Serializer):
    record_id = serializers.IntegerField()
    contributor = serializers.CharField()
    score = serializers.FloatField()


class ReceiptSpanSerializer(serializers.Serializer):
    start = serializers.IntegerField()
    end = serializers.IntegerField()
    record_id = serializers.IntegerField()


class ReceiptSettlementSerializer(serializers.Serializer):
    rule = serializers.CharField()
    status = serializers.CharField()
    transaction_id = serializers.IntegerField(allow_null=True)
    proof = ProofSerializer(
        allow_null=True,
        help_text="The ledger's proof of the settlement (as GET /api/v1/ledger/proofs/{tx_id}/); null before "
        "settlement or for a viewer who took no part in it.",
    )


class ReceiptSerializer(serializers.Serializer):
    inference_id = serializers.IntegerField()
    answered_at = serializers.DateTimeField()
    model = serializers.CharField(help_text="The published model's slug.")
    model_version = serializers.IntegerField()
    adapter_sha256 = serializers.CharField(help_text="Hash of the adapter that answered.")
    base_model = serializers.CharField()
    answer_tokens = serializers.IntegerField()
    status = serializers.CharField(help_text="done, or fallback (no attribution could be computed).")
    method_version = serializers.CharField()
    params = serializers.JSONField(help_text="Every parameter and seed of the method, the noise floor included.")
    index = serializers.JSONField(allow_null=True, help_text="{rows, seed, method_version, files_sha256}")
    contributors = ContributorShareSerializer(many=True)
    unattributed = serializers.FloatField()
    span_coverage = serializers.FloatField()
    top_rows = ReceiptRowSerializer(many=True)
    spans = ReceiptSpanSerializer(many=True)
    settlement = ReceiptSettlementSerializer()
    verify_command = serializers.CharField(help_text="Recomputes this attribution from the stored index.")


class ReputationSerializer(serializers.Serializer):
    username = serializers.CharField()
    score = serializers.IntegerField(help_text="0..100; everyone starts at 50 (attribution/reputation.py).")
    low = serializers.BooleanField(help_text="Below 35: the curators' list shows it first.")
    accepted = serializers.IntegerField(help_text="Rows kept.")
    rejected = serializers.IntegerField(help_text="Rows rejected or dropped.")
    credited = serializers.IntegerField(help_text="Answers of models trained on the datanet that drew on their rows.")
    flagged = serializers.IntegerField(help_text="Contributions data valuation flagged harmful.")
    confirmed = serializers.IntegerField(help_text="Contributions a curator confirmed harmful.")


class FindingRequestSerializer(serializers.Serializer):
    verdict = serializers.ChoiceField(choices=["confirmed", "dismissed"])
    reason = serializers.CharField(max_length=500, help_text="Why; the contributor reads it in their statement.")


class FindingSerializer(serializers.Serializer):
    contribution_id = serializers.IntegerField()
    verdict = serializers.CharField()
    reason = serializers.CharField()
    curator = serializers.CharField(source="curator.username")
    created_at = serializers.DateTimeField()


class PoolEntrySerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    kind = serializers.ChoiceField(
        choices=[("earning_forfeit", "Earnings forfeited"), ("bond_slash", "Bond forfeited")],
        help_text="earning_forfeit: a confirmed harmful upload's earnings still under review; bond_slash: the bond of "
        "an upload rejected as spam or confirmed harmful.",
    )
    amount = serializers.CharField(help_text="Credits, decimal string with 6 places.")
    contribution_id = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField()


class DatanetPoolSerializer(serializers.Serializer):
    datanet = serializers.CharField(help_text="The datanet's slug.")
    currency = serializers.CharField()
    balance = serializers.CharField(help_text="Credits in the pool, decimal string with 6 places.")
    forfeited = serializers.CharField(help_text="Credits that came from forfeited earnings (all time).")
    forfeits = serializers.IntegerField(help_text="How many forfeits.")
    slashed = serializers.CharField(help_text="Credits that came from slashed bonds (all time).")
    slashes = serializers.IntegerField(help_text="How many slashed bonds.")
    entries = PoolEntrySerializer(many=True, help_text="The latest 20 entries, newest first.")
    purpose = serializers.CharField(help_text="What the pool is for and what is not built, in words.")
