"""Reports on MAPO runs (collapse plots)."""
