"""Ship audit events from the outbox to the signed log; sign checkpoints. Runs until stopped (or --once).

Safe to run several at once and to kill at any moment: an organization is sequenced by one shipper at a
time, and whatever was committed to the log is never shipped twice.
"""

from __future__ import annotations

import contextlib
import signal
import time

import psycopg
from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections

from audit import shipper
from tenancy.crypto.vault import KeyServiceError


class Command(BaseCommand):
    help = "Move audit events to the signed audit log (loop; --once for a single pass)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one pass, then exit")
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between passes")
        parser.add_argument("--batch", type=int, default=shipper.DEFAULT_BATCH)
        parser.add_argument("--checkpoint", action="store_true", help="sign a checkpoint for every log now")

    def handle(self, *args, **options):
        stopping = False

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while not stopping:
            try:
                shipped = shipper.ship_once(options["batch"])
                signed = shipper.checkpoint_all(force=options["checkpoint"])
            except KeyServiceError as exc:
                # Shipping committed before signing: the events are in the log, only the checkpoint waits.
                self.stderr.write(f"checkpoint signing unavailable ({exc}); the next pass signs")
                shipped, signed = {}, 0
            except (DatabaseError, psycopg.Error) as exc:
                # PostgreSQL restarting or unreachable: a pass either committed or rolled back whole, so
                # retrying is safe. Drop the broken connections and try again rather than exit.
                if options["once"]:
                    raise
                self.stderr.write(f"database unavailable ({exc}); retrying in 2 s")
                close_old_connections()
                _close_all()
                time.sleep(2)
                continue
            total = sum(shipped.values())
            if total or signed:
                self.stdout.write(
                    f"shipped {total} event(s) for {len(shipped)} organization(s); {signed} checkpoint(s)"
                )
            if options["once"]:
                break
            time.sleep(options["interval"])


def _close_all() -> None:
    from django.db import connections

    for connection in connections.all():
        with contextlib.suppress(DatabaseError):  # already broken; Django opens a new one on next use
            connection.close()
