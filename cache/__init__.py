"""Redis data plane: connection (embedded or URL/cluster), key layout (docs/redis_layout.md),
behavior log, item catalog, per-version projections, the projector job and the device-memory
projection cache in front of Redis. Import the submodules directly (no re-exports)."""
