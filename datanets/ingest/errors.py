class IngestError(Exception):
    """A problem with the whole file (not one row): the contribution fails and none of its rows are kept.

    `message` is written for the person who uploaded the file; `details` may carry data for the page (for example
    the CSV columns found, so the upload page can offer a column mapping)."""

    def __init__(self, message: str, *, code: str = "invalid_file", details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details or {}
