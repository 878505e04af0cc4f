"""An upload handler that stops a file as soon as it passes MF_UPLOAD_MAX_BYTES, so an over-limit file is never
stored whole (Django's later handlers keep at most one chunk of it in memory; the partial temporary file is
discarded by the parser). The rest of the body is not read either: Django would read it line by line to discard it,
and a body without line breaks is one line, read whole into memory. What is left is at most the form allowance of
core.middleware.RequestSizeLimitMiddleware, which refuses larger bodies before they are read; the server discards it
(or closes the connection)."""

from __future__ import annotations

from django.core.files.uploadhandler import FileUploadHandler, StopUpload


class UploadLimitHandler(FileUploadHandler):
    def __init__(self, request, max_bytes: int):
        super().__init__(request)
        self.max_bytes = max_bytes
        self.received = 0

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.max_bytes:
            self.request.upload_too_large = True
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size):
        return None


def install_upload_limit(request, max_bytes: int) -> None:
    """Must run before anything reads request.POST / request.FILES."""
    request.upload_too_large = False
    request.upload_handlers.insert(0, UploadLimitHandler(request, max_bytes))
