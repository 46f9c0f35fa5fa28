"""Everything about *running* a model: backends, packaged weights, device profiles.

Knows nothing of skills, routing or HTTP.
"""
