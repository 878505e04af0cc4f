from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import APIView

from attribution import selectors
from attribution.models import Attribution
from attribution.serializers import AttributionSerializer, ReceiptSerializer
from ledger.calc.money import format_credits


def attribution_payload(attribution: Attribution, *, user) -> dict:
    detail = selectors.attribution_detail(attribution=attribution, user=user)
    return {
        "inference_id": attribution.inference_id,
        "status": attribution.status,
        "method_version": attribution.method_version,
        "unattributed": attribution.unattributed,
        "span_coverage": attribution.span_coverage,
        "settlement": {
            "status": attribution.settlement_status,
            "note": attribution.settlement_note,
            "transaction_id": attribution.settlement_tx_id,
            "rule": attribution.settlement_rule,
        },
        "contributors": [
            {
                "username": c["username"],
                "share": c["share"],
                "settled_share": c["settled_share"],
                "amount": format_credits(c["amount"]) if c["amount"] is not None else None,
            }
            for c in detail["contributors"]
        ],
        "rows": detail["rows"],
        "spans": [
            {k: span[k] for k in ("start", "end", "record_id", "char_start", "char_end")} for span in detail["spans"]
        ],
    }


class InferenceAttributionView(APIView):
    """Which contributors and training rows shaped one answer, and what each was paid. Visible to the caller, the
    model's owner and staff; a row's text only to those who may see the row's datanet (else null)."""

    @extend_schema(responses={200: AttributionSerializer}, operation_id="inference_attribution")
    def get(self, request, inference_id: int):
        try:
            attribution = selectors.attribution_get_for(user=request.user, inference_id=inference_id)
        except Attribution.DoesNotExist:
            raise exceptions.NotFound("There is no attribution for this answer that you may see.") from None
        return Response(AttributionSerializer(attribution_payload(attribution, user=request.user)).data)


class InferenceReceiptView(APIView):
    """Everything needed to re-check one answer's attribution and payment (no row text): model version and adapter
    hash, method parameters and seeds, index digests, shares, top rows, spans, the settlement and its ledger proof.
    `python manage.py attribution_verify ID` recomputes it. Visible to whoever may see the attribution."""

    @extend_schema(responses={200: ReceiptSerializer}, operation_id="inference_receipt")
    def get(self, request, inference_id: int):
        try:
            attribution = selectors.attribution_get_for(user=request.user, inference_id=inference_id)
        except Attribution.DoesNotExist:
            raise exceptions.NotFound("There is no attribution for this answer that you may see.") from None
        if not attribution.is_finished:
            raise exceptions.NotFound("This answer's attribution is still being computed; try again in a minute.")
        return Response(
            ReceiptSerializer(selectors.attribution_receipt(attribution=attribution, user=request.user)).data
        )
