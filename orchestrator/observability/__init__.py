"""Observability: Prometheus metrics, the hooks the service calls, and the web dashboard's data."""
