"""Wallet pages: balance, statement with running balance and filters, earnings charts, CSV export, withdrawals."""

import csv

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from common.csvsafe import csv_safe
from ledger import selectors, services
from ledger.calc.money import format_credits
from ledger.forms import StatementFilterForm, WithdrawalForm
from ledger.models import Transaction


def _statement(request):
    form = StatementFilterForm(request.GET or None)
    filters = form.filters() if form.is_valid() else {}
    return form, selectors.statement(user=request.user, **filters), any(filters.values())


def _without_page(params) -> str:
    """The statement's filters as a query string, for the pager's links (so that "Older" keeps the filter)."""
    params = params.copy()
    params.pop("page", None)
    return params.urlencode()


@login_required
def wallet(request):
    form, rows, filtered = _statement(request)
    paginator = Paginator(rows, 25)
    if not filtered:
        paginator.count = selectors.statement_size(user=request.user)
    page = paginator.get_page(request.GET.get("page"))
    page.object_list = selectors.statement_describe(
        selectors.statement_running_balances(page.object_list), user_id=request.user.pk
    )
    context = {
        "summary": selectors.wallet_summary(user=request.user),
        "filter_form": form,
        "page": page,
        "withdrawal_form": WithdrawalForm(),
        "withdrawals": selectors.withdrawals_for(user=request.user)[:10],
        "earnings": selectors.earnings(user=request.user),
        "review": selectors.earnings_under_review(user=request.user),
        "query": request.GET.copy().urlencode() if request.GET else "",
        "filters_query": _without_page(request.GET),
        "anchor": selectors.latest_anchor(),
    }
    template = "ledger/wallet.html#statement" if request.htmx else "ledger/wallet.html"
    response = render(request, template, context)
    response["Vary"] = "HX-Request"
    return response


@login_required
def receipt(request, tx_id: int):
    """One transaction as a readable receipt, with the integrity checks explained; the raw proof is the API's."""
    try:
        context = selectors.transaction_receipt(user=request.user, tx_id=tx_id)
    except Transaction.DoesNotExist:
        raise Http404("You have no transaction with that number.") from None
    return render(request, "ledger/receipt.html", context)


@login_required
def statement_csv(request):
    _, rows, _ = _statement(request)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="statement.csv"'
    writer = csv.writer(response)
    writer.writerow(["date", "transaction", "kind", "description", "model", "amount", "balance after"])
    for posting in selectors.statement_with_running_balances(rows).iterator(chunk_size=1000):
        tx = posting.transaction
        writer.writerow(
            [
                tx.created_at.isoformat(),
                tx.pk,
                tx.kind,
                csv_safe(tx.memo),
                csv_safe(tx.metadata.get("model", "")),
                format_credits(posting.amount),  # numbers stay numbers: a sign here is not a formula
                format_credits(posting.running_balance),
            ]
        )
    return response


@login_required
@require_POST
def withdrawal_create(request):
    form = WithdrawalForm(request.POST)
    if form.is_valid():
        try:
            services.withdrawal_request(
                user=request.user, amount_micro=form.cleaned_data["amount"], key=request.POST.get("nonce") or None
            )
        except (services.InsufficientFunds, services.InvalidRequest, services.IdempotencyConflict) as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "Withdrawal requested. We will pay it out shortly.")
    else:
        messages.error(request, " ".join(form.errors["amount"]))
    return redirect("ledger:wallet")
