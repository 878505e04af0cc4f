from django import forms

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


class WithdrawalForm(forms.Form):
    amount = forms.CharField(
        label="Amount (credits)", max_length=30, widget=forms.TextInput(attrs={"inputmode": "decimal"})
    )

    def clean_amount(self) -> int:
        try:
            amount = parse_credits(self.cleaned_data["amount"])
        except AmountError as exc:
            raise forms.ValidationError(str(exc)) from None
        if amount <= 0:
            raise forms.ValidationError("Enter an amount above zero.")
        return amount
