"""An over-limit upload is refused without its body being kept in memory: a body far larger than the limit,
produced as it is read (never held by the test), leaves the peak of traced memory far below its size, and nothing is
stored. Declared too large (Content-Length): refused before a byte is read. Declared within the form allowance but
with a file over the limit: stopped while it streams in, the rest not read."""

import tracemalloc

import pytest

from core import middleware
from datanets.models import Contribution
from tests.datanets.test_bad_inputs import stored_files

pytestmark = pytest.mark.django_db

MiB = 1024 * 1024
BOUNDARY = "----upload-boundary"


class GeneratedBody:
    """A multipart body with one file of `size` bytes of "x" (no line breaks), made as it is read."""

    def __init__(self, size: int, name: str = "big.jsonl"):
        self.head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.length = len(self.head) + size + len(self.tail)
        self.position = 0

    def _byte_range(self, size: int) -> bytes:
        end = self.length if size is None or size < 0 else min(self.length, self.position + size)
        out = []
        for start, part_end, make in (
            (0, len(self.head), lambda a, b: self.head[a:b]),
            (len(self.head), self.length - len(self.tail), lambda a, b: b"x" * (b - a)),
            (self.length - len(self.tail), self.length, lambda a, b: self.tail[a - self.length + len(self.tail) :
                                                                             b - self.length + len(self.tail)]),
        ):  # fmt: skip
            a, b = max(self.position, start), min(end, part_end)
            if a < b:
                out.append(make(a, b))
        self.position = end
        return b"".join(out)

    def read(self, size: int = -1) -> bytes:
        return self._byte_range(size)

    def readline(self, size: int = -1) -> bytes:  # the file part has no line breaks: a line is as long as asked
        return self._byte_range(size)


def _post(client, url: str, body: GeneratedBody, declared: int | None = None):
    tracemalloc.start()
    try:
        response = client.generic(
            "POST", url,
            CONTENT_TYPE=f"multipart/form-data; boundary={BOUNDARY}",
            CONTENT_LENGTH=str(declared if declared is not None else body.length),
            **{"wsgi.input": body},
        )  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return response, peak


@pytest.fixture
def small_limit(settings, tmp_path):
    settings.MF_UPLOAD_MAX_BYTES = 2048
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings


@pytest.mark.parametrize("api", [False, True], ids=["page", "api"])
def test_a_body_declared_too_large_is_refused_before_it_is_read(client, cast, datanet, small_limit, api):
    client.force_login(cast.teammate)
    body = GeneratedBody(64 * MiB)
    url = f"/api/v1/datanets/{datanet.slug}/contributions/" if api else f"/datanets/{datanet.slug}/upload/"
    response, peak = _post(client, url, body)
    message = "The upload is larger than the limit of 2.0\xa0KB, so it was not read. Split it into smaller files."
    assert response.status_code == 413
    if api:
        assert response.json() == {"error": {"code": "file_too_large", "message": message, "details": {}}}
    else:
        assert message in response.content.decode()
    assert not response.has_header("Content-Length")  # so Django's development server closes the connection
    assert response["Content-Security-Policy"].startswith("default-src 'self'")
    assert body.position == 0  # not one byte read
    assert peak < 2 * MiB, peak
    assert not Contribution.objects.exists()
    assert stored_files(small_limit) == []


@pytest.mark.parametrize("api", [False, True], ids=["page", "api"])
def test_a_file_over_the_limit_is_stopped_and_the_rest_is_not_read(
    client, cast, datanet, small_limit, monkeypatch, api
):
    monkeypatch.setattr(
        middleware, "FORM_ALLOWANCE_BYTES", 256 * MiB, raising=False
    )  # a body the early check lets through
    client.force_login(cast.teammate)
    body = GeneratedBody(64 * MiB)
    url = f"/api/v1/datanets/{datanet.slug}/contributions/" if api else f"/datanets/{datanet.slug}/upload/"
    response, peak = _post(client, url, body)
    if api:
        assert response.status_code == 413
        assert response.json()["error"] == {
            "code": "file_too_large",
            "message": "The file is larger than the upload limit of 2.0\xa0KB.",
            "details": {},
        }
    else:
        assert response.status_code == 400
        assert "The file is larger than the upload limit of 2.0\xa0KB. Split it into smaller files." in (
            response.content.decode()
        )
    assert peak < 8 * MiB, peak  # the body was 64 MiB
    assert body.position < 1 * MiB  # stopped at the limit (plus a chunk or two), not read to its end
    assert not Contribution.objects.exists()
    assert stored_files(small_limit) == []


def test_the_development_server_is_told_not_to_read_the_refused_body(client, cast, datanet, small_limit):
    """`make run` serves with Django's development server, which reads what is left of a body into memory when the
    response ends (ServerHandler.close reads its LimitedStream): the refusal empties that stream's limit."""
    from django.core.handlers.wsgi import LimitedStream

    body = GeneratedBody(64 * MiB)
    stream = LimitedStream(body, body.length)
    response = client.generic(
        "POST", f"/datanets/{datanet.slug}/upload/",
        CONTENT_TYPE=f"multipart/form-data; boundary={BOUNDARY}", CONTENT_LENGTH=str(body.length),
        **{"wsgi.input": stream},
    )  # fmt: skip
    assert response.status_code == 413
    assert stream.read() == b""
    assert body.position == 0


def test_a_real_server_answers_413_before_the_body_is_sent(live_server, small_limit):
    """Django's own server (what `make run` serves with): the headers of a 1 GB upload get their answer at once, and
    the connection is closed; the body is never sent, so nothing could have been read into memory."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(live_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(
            (
                "POST /datanets/anything/upload/ HTTP/1.1\r\n"
                f"Host: {url.netloc}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {1024 * MiB}\r\n\r\n"
            ).encode()
        )
        answer = b""
        while chunk := conn.recv(65536):  # the server closes the connection after its answer
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    assert head.splitlines()[0] == "HTTP/1.1 413 Request Entity Too Large"
    assert "Connection: close" in head.splitlines()
    assert "The upload is larger than the limit of 2.0\xa0KB, so it was not read." in answer.decode()
