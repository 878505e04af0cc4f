"""Operations views. Transactions and postings are read-only (the database refuses edits on PostgreSQL anyway);
staff act only through services: grant credit, complete or cancel withdrawals."""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.shortcuts import redirect, render
from django.urls import path

from ledger import services
from ledger.calc.money import format_credits
from ledger.forms import CreditsFormField
from ledger.models import Account, Checkpoint, Hold, Posting, Transaction, Withdrawal


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

    def clean_username(self):
        user = get_user_model().objects.filter(username=self.cleaned_data["username"]).first()
        if user is None:
            raise forms.ValidationError("No user with that name.")
        return user


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ["id", "owner", "role", "shard", "currency", "balance_display", "allow_negative"]
    list_filter = ["role", "currency"]
    search_fields = ["owner__username"]
    change_list_template = "admin/ledger/account/change_list.html"

    @admin.display(description="balance (credits)", ordering="balance")
    def balance_display(self, obj):
        return format_credits(obj.balance)

    def get_urls(self):
        return [path("grant/", self.admin_site.admin_view(self.grant_view), name="ledger_grant"), *super().get_urls()]

    def grant_view(self, request):
        if not request.user.is_staff:
            return redirect("admin:index")
        form = GrantForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                services.credit_grant(
                    user_id=form.cleaned_data["username"].pk,
                    amount_micro=form.cleaned_data["amount"],
                    granted_by=request.user,
                    memo=form.cleaned_data["memo"],
                )
            except services.LedgerError as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, "Credit granted.")
                return redirect("admin:ledger_account_changelist")
        context = {**self.admin_site.each_context(request), "form": form, "title": "Grant credit"}
        return render(request, "admin/ledger/grant.html", context)


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
