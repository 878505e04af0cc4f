"""REST endpoints under /api/v1/ledger/, each scoped to the caller."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, status
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import (
    IDEMPOTENCY_CONFLICT_RESPONSE,
    IDEMPOTENCY_KEY_HEADER,
    IdempotencyConflict,
    StrictPageSizeMixin,
    created,
    idempotency_key,
)
from core.throttling import ScopedRateThrottle
from ledger import selectors, services
from ledger.models import Transaction, Withdrawal
from ledger.serializers import (
    AnchorSerializer,
    BalanceSerializer,
    ProofSerializer,
    StatementLineSerializer,
    WithdrawalCreateSerializer,
    WithdrawalSerializer,
)


class LedgerApiError(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, error: services.LedgerError, status_code: int = 400):
        self.status_code = status_code
        super().__init__(detail=str(error), code=error.code)


class BalanceView(APIView):
    """The caller's wallet: balance (including withdrawals waiting for payout) and what is available now."""

    @extend_schema(responses=BalanceSerializer)
    def get(self, request):
        return Response(BalanceSerializer(selectors.wallet_summary(user=request.user)).data)


class StatementPagination(StrictPageSizeMixin, CursorPagination):
    """Cursor pages of a statement (an ever-growing list: page N of a moving list repeats or skips lines, a cursor
    does not), newest first by chain position then posting, each page carrying the newest signed root of the
    chain (`anchor`, null before the first checkpoint): a copy, signed outside the database, that the user can
    keep."""

    ordering = ("-seq", "-id")  # seq: the transaction's chain position, annotated by selectors.statement
    page_size_query_param = "page_size"
    max_page_size = 200

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:  # DRF's answer to a malformed cursor; it is a bad parameter, not a missing page
            raise exceptions.ValidationError(
                {
                    self.cursor_query_param: [
                        "This is not a cursor this list gave out; follow `next` from the first page."
                    ]
                }
            ) from None

    def get_paginated_response(self, data):
        response = super().get_paginated_response(data)
        anchor = selectors.latest_anchor()
        response.data["anchor"] = None if anchor is None else AnchorSerializer(anchor).data
        return response

    def get_paginated_response_schema(self, schema):
        schema = super().get_paginated_response_schema(schema)
        schema["properties"]["anchor"] = {
            "type": "object",
            "nullable": True,
            "description": "The newest signed root of the chain (the fields of a proof's anchor).",
        }
        return schema


class TransactionListView(generics.ListAPIView):
    """The caller's statement, newest first, with the balance after each line. Filters: kind, from, to (dates)."""

    serializer_class = StatementLineSerializer
    pagination_class = StatementPagination

    @extend_schema(
        parameters=[
            OpenApiParameter("kind", str, enum=Transaction.Kind.values),
            OpenApiParameter("from", OpenApiTypes.DATE, description="First day, YYYY-MM-DD"),
            OpenApiParameter("to", OpenApiTypes.DATE, description="Last day, YYYY-MM-DD"),
        ]
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        from ledger.forms import StatementFilterForm

        form = StatementFilterForm(self.request.query_params)
        if not form.is_valid():  # named as the client sent them: from/to, not the form's date_from/date_to
            names = {"date_from": "from", "date_to": "to"}
            raise exceptions.ValidationError({names.get(k, k): v for k, v in form.errors.items()})
        return selectors.statement(user=self.request.user, **form.filters())

    def paginate_queryset(self, queryset):
        page = super().paginate_queryset(queryset)
        return None if page is None else selectors.statement_running_balances(page)


class ProofView(APIView):
    """Inclusion proof of one of the caller's transactions: its canonical content and hash-chain link, and a Merkle
    path to a checkpoint root once one covers it."""

    @extend_schema(responses=ProofSerializer)
    def get(self, request, tx_id: int):
        try:
            proof = selectors.transaction_proof(user=request.user, tx_id=tx_id)
        except Transaction.DoesNotExist:
            raise exceptions.NotFound("You have no transaction with that id.") from None
        return Response(ProofSerializer(proof).data)


class WithdrawalListCreateView(generics.ListCreateAPIView):
    """The caller's withdrawals; POST {amount} requests one (send an Idempotency-Key header to retry safely)."""

    serializer_class = WithdrawalSerializer
    throttle_scope = "writes"

    def get_throttles(self):
        return [ScopedRateThrottle()] if self.request.method == "POST" else super().get_throttles()

    def get_queryset(self):
        return selectors.withdrawals_for(user=self.request.user)

    @extend_schema(
        request=WithdrawalCreateSerializer,
        responses={201: WithdrawalSerializer, **IDEMPOTENCY_CONFLICT_RESPONSE},
        parameters=[IDEMPOTENCY_KEY_HEADER],
    )
    def post(self, request, *args, **kwargs):
        serializer = WithdrawalCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key = idempotency_key(request)
        try:
            withdrawal = services.withdrawal_request(
                user=request.user, amount_micro=serializer.validated_data["amount"], key=key
            )
        except services.IdempotencyConflict:
            raise IdempotencyConflict(key) from None  # the ledger's own key ("withdrawal:<user>:<key>") stays inside
        except (services.InsufficientFunds, services.InvalidRequest) as exc:
            raise LedgerApiError(exc) from None
        location = f"/api/v1/ledger/withdrawals/{withdrawal.pk}/"
        return created(request, WithdrawalSerializer(withdrawal).data, location=location)


class WithdrawalDetailView(generics.RetrieveAPIView):
    """One of the caller's withdrawals (where a new one's `Location` points)."""

    serializer_class = WithdrawalSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return Withdrawal.objects.none()
        return selectors.withdrawals_for(user=self.request.user)
