from django import template

from attribution.selectors import percent as _percent

register = template.Library()


@register.filter
def percent(value) -> str:
    """A share 0..1 as '40%', '<1%' or '0%'."""
    return _percent(float(value or 0))


@register.filter
def get_item(mapping, key):
    """mapping[key], or None (a curator's finding per contribution on the datanet page)."""
    return (mapping or {}).get(key)
