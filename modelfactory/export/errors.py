class ExportError(Exception):
    """An export cannot be made; the message says why in plain words (shown to the user as it is)."""
