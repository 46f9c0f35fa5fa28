"""Serving classes: what the API routers and the CLI call. Thin routers, logic here."""
