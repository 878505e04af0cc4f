from django import template

from ledger.calc.money import format_credits

register = template.Library()


@register.filter
def credits(micro) -> str:
    """Micro-units as credits with 6 places."""
    return format_credits(int(micro or 0))
