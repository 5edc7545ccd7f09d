"""Fencing: a worker writes about a job only while its claim is the job's claim.

Every claim of a job carries an attempt number (the job's ``attempts`` after
the claim). The worker's heartbeat, log chunks, build records and completion
name that claim (`Fence`); the store takes them only while the job is still
running under that attempt and its lease has not lapsed. A worker that was
killed, paused or cut off for longer than its lease finds its writes refused
(`LeaseLost`): another worker may be building the job, and the result that
counts is the one of the claim that holds it.

Pure: the SQL condition is text, the store runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SlipwayError

# True while the claim (job id, attempt) holds its job at time `now`.
# Parameters, in order: job id, attempt, now.
FENCE_HOLDS = (
    "EXISTS (SELECT 1 FROM jobs AS fenced WHERE fenced.id = ? AND fenced.attempts = ?"
    " AND fenced.state = 'running' AND fenced.lease_until >= ?)"
)


@dataclass(frozen=True)
class Fence:
    """One claim of one job: what every write of its worker is checked against."""

    job_id: int
    attempt: int


class LeaseLost(SlipwayError):
    """This worker's claim of the job lapsed: its writes are refused and it stops."""
