"""Reference workloads of DESIGN.md sec. 4, as load-test profiles.

`seq_len` is a property of the *seeded data*, not of a request: the service reads each user's
newest TWIN_MAX_SEQ_LEN behaviors (default: the model's training length). The profile records
which history length the run is meant to exercise; `python -m service.bootstrap --world W1` seeds
users with exactly that length and `scripts/run_stack.sh --world W1` serves them at it
(docs/loadtest.md), so the figure means what the profile's name says.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    seq_len: int  # L: behaviors per user the run is meant to exercise
    candidates: int  # mean candidates per score request
    candidates_max: int  # hard cap (keep <= the service's candidate limit)


PROFILES: dict[str, Profile] = {
    "W1": Profile("W1", "paper: L=10k, 100 candidates", seq_len=10_000, candidates=100, candidates_max=200),
    "W2": Profile("W2", "lifelong: L=100k, 100 candidates", seq_len=100_000, candidates=100, candidates_max=200),
    "W3": Profile("W3", "wide: L=10k, 500 candidates", seq_len=10_000, candidates=500, candidates_max=1000),
}


def get_profile(name: str) -> Profile:
    key = name.strip().upper()
    if key not in PROFILES:
        raise ValueError(f"unknown load-test profile {name!r}; expected one of {sorted(PROFILES)}")
    return PROFILES[key]
