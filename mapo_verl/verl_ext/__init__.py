"""Adapters between veRL 0.9.1 and the MAPO math core (they translate, never re-derive)."""
