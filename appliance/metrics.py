"""A small Prometheus registry: counters, gauges and histograms with labels.

The components record into a `Registry` that `app.py` creates and passes down (no
module-level registry). `render()` is pure and produces the Prometheus text exposition
format (version 0.0.4) that `/metrics` serves. Names follow the original
VirtualCluster where it had one (`syncer_dws_operations_total`, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

LabelValues = tuple[str, ...]

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


@dataclass(slots=True)
class _Metric:
    name: str
    help: str
    labelnames: tuple[str, ...]

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)


@dataclass(slots=True)
class Counter(_Metric):
    values: dict[LabelValues, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in sorted(self.values.items())]

    kind = "counter"


@dataclass(slots=True)
class Gauge(_Metric):
    values: dict[LabelValues, float] = field(default_factory=dict)
    #: computed at scrape time instead of set (e.g. queue lengths)
    callback: Callable[[], dict[LabelValues, float]] | None = None

    def set(self, value: float, **labels: str) -> None:
        self.values[self._key(labels)] = value

    def remove(self, **labels: str) -> None:
        self.values.pop(self._key(labels), None)

    def lines(self) -> list[str]:
        values = dict(self.values)
        if self.callback is not None:
            values.update(self.callback())
        return [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in sorted(values.items())]

    kind = "gauge"


@dataclass(slots=True)
class Histogram(_Metric):
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    counts: dict[LabelValues, list[int]] = field(default_factory=dict)
    sums: dict[LabelValues, float] = field(default_factory=dict)

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1
        self.sums[key] = self.sums.get(key, 0.0) + value

    def lines(self) -> list[str]:
        out = []
        for key, counts in sorted(self.counts.items()):
            for bound, c in zip((*self.buckets, math.inf), counts, strict=True):
                le = f'le="{_fmt(bound)}"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {c}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_fmt(self.sums[key])}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {counts[-1]}")
        return out

    kind = "histogram"


class Registry:
    """Named metrics; registering the same name twice returns the existing metric."""

    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}

    def _get(self, cls: type, name: str, help: str, labelnames: Sequence[str], **kw: object):  # type: ignore[no-untyped-def]
        existing = self._metrics.get(name)
        if existing is not None:
            if not isinstance(existing, cls):
                raise ValueError(f"metric {name} already registered as {type(existing).__name__}")
            return existing
        metric = cls(name=name, help=help, labelnames=tuple(labelnames), **kw)
        self._metrics[name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._get(Counter, name, help, labelnames)  # type: ignore[no-any-return]

    def gauge(
        self, name: str, help: str, labelnames: Sequence[str] = (),
        callback: Callable[[], dict[LabelValues, float]] | None = None,
    ) -> Gauge:
        g = self._get(Gauge, name, help, labelnames)
        if callback is not None:
            g.callback = callback
        return g  # type: ignore[no-any-return]

    def histogram(
        self, name: str, help: str, labelnames: Sequence[str] = (),
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> Histogram:
        return self._get(Histogram, name, help, labelnames, buckets=buckets)  # type: ignore[no-any-return]

    def render(self) -> str:
        out: list[str] = []
        for name in sorted(self._metrics):
            m = self._metrics[name]
            out.append(f"# HELP {name} {m.help}")
            out.append(f"# TYPE {name} {m.kind}")
            out.extend(m.lines())
        return "\n".join(out) + "\n"
