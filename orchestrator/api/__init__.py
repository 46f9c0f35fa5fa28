"""FastAPI routers, one module per resource: parse → call a service → shape the reply."""
