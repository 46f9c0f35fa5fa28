"""Pools: the pool YAML schema, and the loader for pool files and `replay:` recording folders."""
