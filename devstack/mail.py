"""A local SMTP server for the demo: mail the platform sends (invitations) lands in .data/mail/ as .eml files.

Production sends through the clinic's SMTP relay (EMAIL_HOST and friends); `make run` has none, so it starts
this one on loopback and points the server at it, and the demo's mail can be read where it is kept.

    python -m devstack.mail --port 8025 --dir .data/mail      # on its own, for a quick look
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiosmtpd.controller import Controller


class MaildropHandler:
    """Writes each message, as received, to one file named by the time it arrived."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)  # invitations carry single-use tokens

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd calls this hook by name
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.directory / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
        content = envelope.original_content or envelope.content
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        path.chmod(0o600)
        return "250 Message accepted for delivery"


class LocalMail:
    """The SMTP server on 127.0.0.1:port, in a thread of the calling process."""

    def __init__(self, directory: Path, port: int = 8025) -> None:
        self.directory, self.port = directory, port
        self.controller = Controller(MaildropHandler(directory), hostname="127.0.0.1", port=port)

    def start(self) -> dict:
        self.controller.start()
        return {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(self.port), "EMAIL_USE_TLS": "false"}

    def stop(self) -> None:
        self.controller.stop()

    def messages(self) -> list[Path]:
        return sorted(self.directory.glob("*.eml"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--dir", type=Path, default=Path(".data/mail"))
    args = parser.parse_args()
    mail = LocalMail(args.dir, args.port)
    mail.start()
    print(f"SMTP on 127.0.0.1:{args.port}, mail kept in {args.dir}/", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        mail.stop()


if __name__ == "__main__":
    main()
