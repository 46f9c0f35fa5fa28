"""Which experts within a latency and energy budget (MoE^2): the exact subset solver (`solver`,
its search and limits private beside it) and the planner that costs a pool's experts for it."""
