from django import forms
from django.core.exceptions import ValidationError

from ledger.calc.money import AmountError, parse_credits
from ledger.models import Transaction


class StatementFilterForm(forms.Form):
    kind = forms.ChoiceField(choices=[("", "All kinds"), *Transaction.Kind.choices], required=False)
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, data=None, *args, **kwargs):
        if data is not None:  # the API names them from/to
            data = data.copy()
            for short, long in (("from", "date_from"), ("to", "date_to")):
                if short in data and long not in data:
                    data[long] = data[short]
        super().__init__(data, *args, **kwargs)

    def filters(self) -> dict:
        data = self.cleaned_data
        return {"kind": data.get("kind") or None, "date_from": data.get("date_from"), "date_to": data.get("date_to")}


class CreditsFormField(forms.Field):
    """A credit amount typed by a person, cleaned to micro-units by the one strict parser (ledger.calc.money)."""

    widget = forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"})

    def to_python(self, value):
        if value in self.empty_values:
            return None
        try:
            return parse_credits(value)
        except AmountError as exc:
            raise ValidationError(str(exc), code="invalid") from None


class WithdrawalForm(forms.Form):
    amount = CreditsFormField(label="Amount (credits)")

    def clean_amount(self) -> int:
        amount = self.cleaned_data["amount"]
        if amount <= 0:
            raise forms.ValidationError("Enter an amount above zero.")
        return amount
