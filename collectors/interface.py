"""The collector contract: one method, `collect()`, returning immutable samples.

A collector takes everything outside it (the NVML module, an HTTP opener, the clock) in its
constructor, so that tests feed it recorded data at exactly that boundary. Failures come in two
sizes, as in pip-audit's `interface.py`:
- a *problem* with one item (one GPU lost, one field unsupported, one endpoint down) is a result:
  it rides along in `Collection.problems`, and the rest of the pass goes on;
- a source that cannot run at all (no NVML library, no driver) raises `CollectorUnavailable`,
  whose `fix` says what a person can do about it (`auditor doctor` prints it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from auditor.model import GpuSample, ServerSample

S_co = TypeVar("S_co", GpuSample, ServerSample, covariant=True)


class CollectorError(Exception):
    """A collector failed in a way a person can act on. `kind` groups errors for the exporter."""

    def __init__(self, message: str, *, kind: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message


class CollectorUnavailable(CollectorError):  # noqa: N818  (a state, not a fault)
    """The source cannot be read at all right now (no library, no driver, no permission)."""


class BillingUnavailable(CollectorUnavailable):
    """A billing source cannot be read: no credentials, a permission denied, the API unreachable.
    `permission` names what to grant (`ce:GetCostAndUsage`, `bigquery.jobs.create`), when that is the fix."""

    def __init__(self, message: str, *, fix: str | None = None, permission: str | None = None) -> None:
        super().__init__(message, kind="billing", fix=fix)
        self.permission = permission


@dataclass(frozen=True, slots=True)
class Problem:
    """One item of a pass that could not be read; the others were."""

    subject: str
    """What failed: a GPU's UUID, an endpoint's URL, `nvml.energy` …"""
    kind: str
    """A short, stable word for counting: `gpu_lost`, `not_supported`, `unreachable`, `timeout` …"""
    message: str


@dataclass(frozen=True, slots=True)
class Collection(Generic[S_co]):
    """What one pass of a collector read: its samples, and the items it could not read."""

    samples: tuple[S_co, ...]
    problems: tuple[Problem, ...] = ()


class Collector(Protocol[S_co]):
    """A source of samples. `name` labels its health in logs and the exporter."""

    @property
    def name(self) -> str: ...

    def collect(self) -> Collection[S_co]:
        """One sampling pass. Raises CollectorUnavailable when the source cannot be read at all."""
        ...


class Backoff:
    """Exponential backoff with a cap: 1, 2, 4, … seconds between attempts."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.delay_s = initial_s
        self.next_ts = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.next_ts

    def failed(self, now: float) -> None:
        self.next_ts = now + self.delay_s
        self.delay_s = min(self.delay_s * 2, self.max_s)

    def reset(self) -> None:
        self.delay_s = self.initial_s
        self.next_ts = 0.0
