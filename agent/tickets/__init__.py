"""Driver problem reports: a ticket with a diagnostic snapshot, kept in the store until the
cloud confirmed it (the tickets table is its own outbox, like charge_records)."""
