"""{% split_policy %}: how an answer's fee is shared under the current settlement rule, in plain words (shown on
the datanet and model pages, which load this tag rather than import attribution); {% datanet_pool datanet %}: the
datanet's pool (the datanet page, for its curators; datanets cannot import the ledger)."""

from django import template

from attribution.selectors import POOL_PURPOSE
from attribution.services import RETRIEVAL_PART, SETTLE_2_POLICY, SETTLEMENT_RULE
from ledger import selectors as ledger_selectors

register = template.Library()


def split_policy_parts() -> dict:
    policy = SETTLE_2_POLICY
    return {
        "rule": SETTLEMENT_RULE,
        "version": policy.version,
        "owner": f"{policy.owner_bp / 100:g}%",
        "contributors": f"{policy.contributors_bp / 100:g}%",
        "platform": f"{policy.platform_bp / 100:g}%",
        "unattributed_to": policy.unattributed_to,
        "retrieval_part": f"{float(RETRIEVAL_PART) * 100:g}%",
    }


@register.inclusion_tag("attribution/_split_policy.html")
def split_policy() -> dict:
    return {"policy": split_policy_parts()}


@register.inclusion_tag("attribution/_datanet_pool.html")
def datanet_pool(datanet) -> dict:
    """{% datanet_pool datanet %}: the datanet's pool (balance, where it came from, the latest entries) and what it
    is for; the page shows it to the datanet's owner and curators."""
    pool = ledger_selectors.datanet_pool(datanet_id=datanet.pk, recent=5)
    return {"pool": pool, "purpose": POOL_PURPOSE, "slug": datanet.slug}
