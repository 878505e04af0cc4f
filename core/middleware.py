import logging

from core.api import error_response

logger = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/v1/")


class ApiErrorMiddleware:
    """On API paths an unexpected exception is a JSON 500, never Django's HTML debug page."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not request.path.startswith(API_PREFIXES):
            return None
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response("server_error", "Something went wrong on our side; it has been logged.", 500)
