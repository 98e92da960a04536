"""Driver support at the station: the message catalog, the per-connector message, displays."""
