"""Which experts, which aggregator, within which budget."""
