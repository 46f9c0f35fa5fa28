"""Composition and service: settings, pipeline, routing, scheduling, store, API, CLI."""
