"""The embedded broker (kombu's filesystem transport, `CELERY_BROKER_URL=filesystem://`) with whole messages only.

kombu writes a message by opening `<name>.msg` in the queue folder and then writing it, so a consumer polling the
folder can take the file in between, read it empty and die ("Unrecoverable error: JSONDecodeError"): seen when 8
clients' answers were enqueued at once, and the inference worker (and with it `make run`) stopped. Here the message
is written under a name no consumer takes (`.tmp`) and renamed into place, so it appears whole or not at all.
config/celery.py points the `filesystem` scheme at this transport."""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".tmp"
        try:
            with open(partial, "wb") as message:
                message.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)  # atomic on one file system
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
