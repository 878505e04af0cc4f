"""Operations views. Transactions and postings are read-only (the database refuses edits on PostgreSQL anyway);
staff act only through services: grant credit (with the permission ledger.grant_credit; every grant is listed under
"Credit grants"), complete or cancel withdrawals, release pending earnings early, return bonds. Forfeits and slashes
go through a curator's finding (attribution), so they always carry its reason."""

import uuid

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.shortcuts import redirect, render
from django.urls import path

from ledger import selectors, services
from ledger.calc.money import format_credits
from ledger.forms import CreditsFormField
from ledger.models import (
    Account,
    Bond,
    Checkpoint,
    CreditGrant,
    Hold,
    PendingEarning,
    Posting,
    Transaction,
    Withdrawal,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class GrantForm(forms.Form):
    username = forms.CharField()
    amount = CreditsFormField(help_text="Credits, e.g. 25 or 2.5")
    memo = forms.CharField(required=False)
    # Made when the form is shown and sent back with it: sending the same form twice (a double click, a retry after
    # a lost answer) is one grant. Without it (a scripted post), each post is a new grant.
    key = forms.UUIDField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["key"].initial = uuid.uuid4()
        ceiling = settings.MF_LEDGER_GRANT_MAX_CREDITS
        self.fields["amount"].help_text = f"Credits, e.g. 25 or 2.5; at most {ceiling:,} in one grant."

    def clean_username(self):
        user = get_user_model().objects.filter(username=self.cleaned_data["username"]).first()
        if user is None:
            raise forms.ValidationError("No user with that name.")
        return user


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ["id", "owner", "role", "datanet_display", "shard", "currency", "balance_display", "allow_negative"]
    list_filter = ["role", "currency"]
    search_fields = ["owner__username", "=datanet_id"]
    change_list_template = "admin/ledger/account/change_list.html"

    @admin.display(description="balance (credits)", ordering="balance")
    def balance_display(self, obj):
        return format_credits(obj.balance)

    @admin.display(description="datanet (pools)", ordering="datanet_id")
    def datanet_display(self, obj):
        if obj.role != Account.Role.DATANET_POOL:
            return ""
        return f"datanet {obj.datanet_id}" if obj.datanet_id is not None else "shared (before pools per datanet)"

    def get_urls(self):
        return [path("grant/", self.admin_site.admin_view(self.grant_view), name="ledger_grant"), *super().get_urls()]

    def grant_view(self, request):
        context = {**self.admin_site.each_context(request), "title": "Grant credit"}
        if not request.user.has_perm(services.GRANT_PERMISSION):
            context["refused"] = True
            return render(request, "admin/ledger/grant.html", context, status=403)
        form = GrantForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                services.credit_grant(
                    user_id=data["username"].pk,
                    amount_micro=data["amount"],
                    granted_by=request.user,
                    memo=data["memo"],
                    key=f"grant:{data['key'] or uuid.uuid4()}",
                )
            except services.IdempotencyConflict:
                messages.error(
                    request,
                    "This form was already sent once with other details, and that grant was made. Check the list "
                    "of credit grants; the form below is new, send it only if another grant is needed.",
                )
                form = GrantForm(initial={"username": data["username"].username, "memo": data["memo"]})
            except services.LedgerError as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, "Credit granted.")
                return redirect("admin:ledger_account_changelist")
        context["form"] = form
        return render(request, "admin/ledger/grant.html", context)


@admin.register(CreditGrant)
class CreditGrantAdmin(ReadOnlyAdmin):
    """The audit list of staff grants: who granted, to whom, how much, why, when, and the ledger transaction. Open
    to staff who may grant credit or who have "Can view credit grant"."""

    list_display = ["created_at", "granted_by_name", "recipient_name", "amount_credits", "memo", "transaction_id"]
    list_display_links = None
    search_fields = ["recipient_name", "granted_by_name", "memo"]  # annotations of selectors.credit_grants
    search_help_text = "Search by who received the credit, who granted it, or the memo."

    def get_queryset(self, request):
        return selectors.credit_grants()

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm(services.GRANT_PERMISSION) or request.user.has_perm("ledger.view_creditgrant")

    @admin.display(description="granted by")
    def granted_by_name(self, obj):
        return obj.granted_by_name

    @admin.display(description="to")
    def recipient_name(self, obj):
        return obj.recipient_name

    @admin.display(description="amount (credits)")
    def amount_credits(self, obj):
        return format_credits(obj.granted_micro)

    @admin.display(description="ledger transaction", ordering="pk")
    def transaction_id(self, obj):
        return obj.pk


class PostingInline(admin.TabularInline):
    model = Posting
    fields = ["account", "amount"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Transaction)
class TransactionAdmin(ReadOnlyAdmin):
    list_display = ["seq", "id", "kind", "status", "memo", "idempotency_key", "created_at"]
    list_filter = ["kind", "status"]
    search_fields = ["idempotency_key", "hash"]
    inlines = [PostingInline]

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Posting)
class PostingAdmin(ReadOnlyAdmin):
    list_display = ["id", "transaction", "account", "amount"]
    list_select_related = ["transaction", "account"]


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ["id", "first_seq", "last_seq", "tx_count", "merkle_root", "created_at"]


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = ["key", "payer", "amount", "status", "created_at", "closed_at"]
    list_filter = ["status"]


@admin.register(Withdrawal)
class WithdrawalAdmin(ReadOnlyAdmin):
    list_display = ["id", "user", "amount_credits", "status", "created_at", "closed_at", "decided_by"]
    list_filter = ["status"]
    actions = ["complete", "cancel"]

    def _close(self, request, queryset, complete: bool):
        done = 0
        for withdrawal in queryset.filter(status=Withdrawal.Status.REQUESTED).order_by("pk"):
            close = services.withdrawal_complete if complete else services.withdrawal_cancel
            try:
                close(withdrawal_id=withdrawal.pk, staff_user=request.user)
                done += 1
            except services.LedgerError as exc:
                messages.error(request, str(exc))
        self.message_user(request, f"{done} withdrawal(s) {'paid out' if complete else 'cancelled'}.")

    @admin.action(description="Mark as paid out")
    def complete(self, request, queryset):
        self._close(request, queryset, True)

    @admin.action(description="Cancel and return the credit")
    def cancel(self, request, queryset):
        self._close(request, queryset, False)


@admin.register(PendingEarning)
class PendingEarningAdmin(ReadOnlyAdmin):
    list_display = [
        "key",
        "user",
        "amount_credits",
        "contribution_id",
        "datanet_id",
        "available_at",
        "status",
        "reason",
    ]
    list_filter = ["status"]
    search_fields = ["user__username", "key"]
    actions = ["release"]

    @admin.action(description="Release now (make available in the wallet)")
    def release(self, request, queryset):
        done = 0
        for key in queryset.filter(status=PendingEarning.Status.PENDING).order_by("pk").values_list("key", flat=True):
            try:
                services.earning_release(earning_key=key)
                done += 1
            except services.LedgerError as exc:
                messages.error(request, str(exc))
        self.message_user(request, f"{done} pending earning(s) released.")


@admin.register(Bond)
class BondAdmin(ReadOnlyAdmin):
    list_display = ["key", "user", "amount_credits", "contribution_id", "datanet_id", "status", "reason", "created_at"]
    list_filter = ["status"]
    search_fields = ["user__username", "key"]
    actions = ["give_back"]

    @admin.action(description="Return to the contributor")
    def give_back(self, request, queryset):
        done = 0
        for key in queryset.filter(status=Bond.Status.HELD).order_by("pk").values_list("key", flat=True):
            try:
                services.bond_return(bond_key=key)
                done += 1
            except services.LedgerError as exc:
                messages.error(request, str(exc))
        self.message_user(request, f"{done} bond(s) returned.")
