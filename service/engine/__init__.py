"""The scoring engine: Redis fetch on the event loop, micro-batcher, one inference thread per device."""
