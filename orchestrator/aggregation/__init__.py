"""Turning a query's expert answers into one: the aggregator LLM's prompt, or a weighted vote
of the answers' letters with per-expert, per-letter reliability."""
