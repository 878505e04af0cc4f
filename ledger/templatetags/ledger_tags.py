from django import template
from django.utils.html import format_html

from ledger.calc.money import format_credits, format_credits_short

register = template.Library()


@register.filter
def credits(micro) -> str:
    """Micro-units as a person reads them (ledger.calc.money.format_credits_short: 10.00, 0.0112), with the exact
    amount in the title, shown on hover."""
    micro = int(micro or 0)
    return format_html('<span class="amount" title="{} credits">{}</span>', format_credits(micro),
                       format_credits_short(micro))  # fmt: skip


@register.filter
def credits_exact(micro) -> str:
    """Micro-units with all 6 places, for details views (receipts)."""
    return format_credits(int(micro or 0))
