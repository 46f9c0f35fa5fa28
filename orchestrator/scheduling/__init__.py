"""Which model loads when: the batch planner and the device worker that executes stages."""
