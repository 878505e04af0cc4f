from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import APIView

from attribution import selectors
from attribution.models import Attribution
from attribution.selectors import POOL_PURPOSE
from attribution.serializers import (
    AttributionSerializer,
    DatanetPoolSerializer,
    FindingRequestSerializer,
    FindingSerializer,
    ReceiptSerializer,
    ReputationSerializer,
)
from core.api import created
from datanets.models import Datanet
from datanets.selectors import datanet_can_curate, datanet_get_visible
from ledger.calc.money import format_credits
from ledger.models import CURRENCY
from ledger.selectors import datanet_pool


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


def _curated_datanet(request, slug: str, *, what: str) -> Datanet:
    """The datanet `slug` if the caller curates it: 404 when they cannot see it, 403 (naming `what` only curators
    see) when they can but do not curate it."""
    try:
        datanet = datanet_get_visible(user=request.user, slug=slug)
    except Datanet.DoesNotExist:
        raise exceptions.NotFound("No such datanet.") from None
    if not datanet_can_curate(user=request.user, datanet=datanet):
        raise exceptions.PermissionDenied(f"Only the datanet's owner and curators see {what}.")
    return datanet


class DatanetReputationView(APIView):
    """Each contributor's reputation in a datanet with its parts, lowest first (curators only)."""

    @extend_schema(responses={200: ReputationSerializer(many=True)}, operation_id="datanet_reputation")
    def get(self, request, slug: str):
        from attribution.reputation import datanet_reputations

        datanet = _curated_datanet(request, slug, what="its contributors' reputation")
        rows = [{**r.__dict__, "low": r.low} for r in datanet_reputations(datanet=datanet)]
        return Response(ReputationSerializer(rows, many=True).data)


class DatanetPoolView(APIView):
    """The datanet's pool: forfeited earnings and slashed bonds, with the latest entries (owner and curators)."""

    @extend_schema(responses={200: DatanetPoolSerializer}, operation_id="datanet_pool")
    def get(self, request, slug: str):
        datanet = _curated_datanet(request, slug, what="its pool")
        pool = datanet_pool(datanet_id=datanet.pk, recent=20)
        entries = [{**entry, "amount": format_credits(entry["amount"])} for entry in pool["entries"]]
        data = {
            "datanet": datanet.slug,
            "currency": CURRENCY,
            "balance": format_credits(pool["balance"]),
            "forfeited": format_credits(pool["forfeited"]),
            "forfeits": pool["forfeits"],
            "slashed": format_credits(pool["slashed"]),
            "slashes": pool["slashes"],
            "entries": entries,
            "purpose": POOL_PURPOSE,
        }
        return Response(DatanetPoolSerializer(data).data)


class ContributionFindingView(APIView):
    """A curator's verdict on a contribution: "confirmed" harmful (rejected, pending earnings forfeited, bond
    slashed, by ledger transactions) or "dismissed". Deciding the same again changes nothing; another verdict is 409."""

    @extend_schema(
        request=FindingRequestSerializer, responses={201: FindingSerializer}, operation_id="contribution_finding"
    )
    def post(self, request, contribution_id: int):
        from attribution.services import FindingError, contribution_decide
        from datanets.models import Contribution
        from datanets.selectors import datanet_list_visible

        contribution = (
            Contribution.objects.filter(pk=contribution_id, datanet__in=datanet_list_visible(user=request.user))
            .select_related("datanet")
            .first()
        )
        if contribution is None:
            raise exceptions.NotFound("No such contribution.")
        data = FindingRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            finding = contribution_decide(contribution=contribution, curator=request.user, **data.validated_data)
        except FindingError as exc:
            error = exceptions.APIException(detail=exc.message, code=exc.code)
            error.status_code = exc.status
            raise error from None
        # the finding is read back with its contribution
        return created(
            request, FindingSerializer(finding).data, location=reverse("contribution-detail", args=[contribution.pk])
        )
