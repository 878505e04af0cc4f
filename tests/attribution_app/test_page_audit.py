"""No page shows a raw hash or six-decimal noise outside a details view (issue 18's "done when").

A tiny chain runs through the real services (upload, version, training with the attribution index, a published
model, answers attributed and settled, an export), then every page a contributor, the curator and model owner, and
a caller can reach by following links from their start pages is read. Each page's visible text, outside <details>
(and outside scripts, styles and templates), must hold:

- no word of 12 or more hexadecimal digits, letters and digits mixed (a SHA-1 or SHA-256 hash, a manifest or
  chain hash, or the start of one);
- no number with six or more decimals, except an amount written as a person reads it (`credits` filter: a
  <span class="amount"> whose text is format_credits_short of the exact value in its title; that form has at most
  three significant digits, e.g. 0.000123 for a sliver).

The one deliberate exception: the export page shows the file's SHA-256 so that a person can check the download.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from django.utils import timezone

from attribution.tasks import inference_attribute_task
from ledger.calc.money import format_credits_short
from modelfactory.models import ModelExport
from modelfactory.services import trained_model_publish
from tests.attribution_app.conftest import LONG_QUESTION

HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{12,}\b", re.IGNORECASE)
SIX_DECIMALS = re.compile(r"\d+\.\d{6,}")
EXACT = re.compile(r"(-?[\d,]+\.\d{6}) credits")
# Pages never followed: not pages (files, the API, the admin), or leaving the site's pages (log out).
SKIP = re.compile(
    r"^/(?:api/|v1/|admin/|accounts/logout/|static/|media/)|\.(?:csv|jsonl|zip|gguf|json)$|/download/|/modelfile/"
)
MAX_PAGES = 120
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Found:
    hashes: list[str] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)


class VisibleText(HTMLParser):
    """The text a person reads without opening a <details>; amounts in the `credits` form are checked apart."""

    HIDDEN = {"script", "style", "template", "details", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.amounts: list[tuple[str, str]] = []  # (shown, title)
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag not in VOID:
            self.stack.append((tag, attrs))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        if any(tag in self.HIDDEN for tag, _ in self.stack):
            return
        if self.stack and self.stack[-1][0] == "span" and "amount" in (self.stack[-1][1].get("class") or "").split():
            self.amounts.append((data.strip(), self.stack[-1][1].get("title", "")))
            return
        self.text.append(data)


def audit(body: str) -> tuple[Found, list[str]]:
    parser = VisibleText()
    parser.feed(body)
    parser.close()
    text = " ".join(parser.text)
    found = Found(hashes=HASH.findall(text), noise=SIX_DECIMALS.findall(text))
    for shown, title in parser.amounts:
        exact = EXACT.fullmatch(title)
        micro = int(exact.group(1).replace(",", "").replace(".", "")) if exact else None
        if micro is None or shown != format_credits_short(micro):
            found.noise.append(f"{shown} (title {title!r})")
    return found, parser.links


def crawl(client, user, starts: list[str]) -> dict[str, Found]:
    """{path: what it showed} for the pages `user` reaches from `starts` by links (GET only, same site)."""
    client.force_login(user)
    seen: dict[str, Found] = {}
    queue = list(starts)
    variants: dict[str, int] = {}
    while queue and len(seen) < MAX_PAGES:
        url = queue.pop(0)
        parts = urlsplit(url)
        if parts.netloc or url in seen or SKIP.search(parts.path):
            continue
        variants[parts.path] = variants.get(parts.path, 0) + 1
        if variants[parts.path] > 3:  # ?page=, ?status=: a few variants of one page are enough
            continue
        response = client.get(url)
        if response.status_code != 200 or not response.get("Content-Type", "").startswith("text/html"):
            continue
        found, links = audit(response.content.decode())
        seen[url] = found
        for link in links:
            link = urljoin(url, link).split("#")[0]
            if link and link not in seen:
                queue.append(link)
    return seen


@pytest.mark.slow
def test_no_page_shows_a_raw_hash_or_six_decimal_noise(planted, make_inference, cast, client, enqueued):
    owner, caller = planted.owner, cast.outsider
    alice = planted.people["alice"]
    model = planted.model_version.model
    trained_model_publish(user=owner, slug=model.slug, price_per_1k_tokens=1_000_000, visibility="public")
    questions = [LONG_QUESTION, next(q for q, _ in planted.rows["bob"] if q.startswith("code of "))]
    inferences = [make_inference(planted, q, caller=caller, fee=123_457) for q in questions]
    for inference in inferences:
        inference_attribute_task.apply(args=[inference.pk])
    sha256 = hashlib.sha256(b"the adapter file").hexdigest()
    export = ModelExport.objects.create(
        version=planted.model_version, format="adapter", requested_by=owner, status="succeeded", progress=1,
        path="/nowhere/adapter.zip", sha256=sha256, bytes=28_672, seconds=0.5, finished_at=timezone.now(),
    )  # fmt: skip
    export_page = f"/models/{model.slug}/exports/{export.pk}/"
    contribution = alice.contributions.get()
    answer = f"/attribution/inferences/{inferences[0].pk}/"
    home = ["/", "/datanets/", "/models/", "/train/", "/attribution/", "/wallet/", "/accounts/profile/"]
    roles = {
        "contributor": (alice, [*home, f"/datanets/contributions/{contribution.pk}/rows/"]),
        "curator and model owner": (
            owner,
            [*home, f"/datanets/{planted.datanet.slug}/review/", answer, export_page, f"/train/jobs/{planted.job.pk}/"],
        ),  # fmt: skip
        "caller": (caller, [*home, answer, f"/models/{model.slug}/playground/"]),
    }
    read, caught = {}, {}
    for role, (user, starts) in roles.items():
        pages = crawl(client, user, starts)
        read[role] = set(pages)
        for path, found in pages.items():
            hashes = [h for h in found.hashes if not (path == export_page and h == sha256)]  # shown on purpose
            if hashes or found.noise:
                caught[f"{role} {path}"] = (hashes, found.noise)
    assert caught == {}
    # The crawl reached the pages that matter (so the check cannot pass by reading nothing).
    assert {answer, export_page, "/wallet/", f"/models/{model.slug}/"} <= read["curator and model owner"]
    assert f"/datanets/contributions/{contribution.pk}/rows/" in read["contributor"]
    assert "/wallet/" in read["caller"] and answer in read["caller"]
    assert any(path.startswith("/wallet/receipts/") for path in read["caller"])
    assert any(path.startswith(f"/datanets/{planted.datanet.slug}/versions/") for path in read["contributor"])
    # And the exception is real: the export page shows the hash, the check sees it, and only there.
    client.force_login(owner)
    assert audit(client.get(export_page).content.decode())[0].hashes == [sha256]


def test_the_audit_reads_visible_text_only():
    page = (
        '<p>Chain 6f1e' + "a" * 60 + ' and 10.000000 credits</p><details><summary>How</summary>'
        '<p>' + "b" * 64 + ' 0.123456</p></details><script>var h="' + "c" * 64 + '";</script>'
        '<p><span class="amount" title="0.011200 credits">0.0112</span>'
        '<span class="amount" title="10.000000 credits">10.000000</span></p>'
    )  # fmt: skip
    found, _ = audit(page + "<p>fingerprint 9f3a2b1c0d4e… 28,672 bytes, 100000000000 tokens, deadbeefcafe</p>")
    assert found.hashes == ["6f1e" + "a" * 60, "9f3a2b1c0d4e"]
    assert found.noise == ["10.000000", "10.000000 (title '10.000000 credits')"]
