import os
import socket

from celery import shared_task


@shared_task(name="core.tasks.health_ping_task", time_limit=30)
def health_ping_task(token: str) -> dict:
    """Proves the web -> broker -> worker -> result round trip; echoes the token with who answered."""
    return {"token": token, "hostname": socket.gethostname(), "pid": os.getpid()}
