"""Audit: events, outbox, shipper, signed log store, checkpoints, export and the offline verifier."""
