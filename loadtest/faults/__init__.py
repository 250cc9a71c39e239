"""Fault scenarios under load against a real local stack (`make faults`, `make soak`).

    python -m loadtest.faults [--quick] [--only redis_stop,activation] [--base-port P --redis-port P]
    python -m loadtest.faults.soak [--minutes 10] [--rate 20]

`stack.Stack` starts what scripts/run_stack.sh starts (redis-server with AOF, the bootstrap, one
scorer), but keeps the handles a fault needs: it can stop, pause or restart Redis and SIGKILL and
restart the scorer. `load.Load` is an open-loop generator (requests at a fixed rate, latency measured
from the scheduled send, so a stall is not hidden by a waiting client) over a minimal keep-alive
HTTP/1.1 client. Each scenario (`scenarios.py`) prints one row of the table docs/benchmarks.md holds.
Loopback only: this generates real load.
"""
