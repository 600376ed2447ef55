"""Process-local counters, rendered in Prometheus' text format at GET /metrics."""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self._counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        self._counts[(name, tuple(sorted(labels.items())))] += amount

    def value(self, name: str, **labels: str) -> int:
        return self._counts[(name, tuple(sorted(labels.items())))]

    def render(self) -> str:
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), count in sorted(self._counts.items()):
            if name not in seen:
                lines.append(f"# TYPE postroom_{name} counter")
                seen.add(name)
            label_text = ",".join(f'{key}="{value}"' for key, value in labels)
            lines.append(
                f"postroom_{name}{{{label_text}}} {count}" if labels else f"postroom_{name} {count}"
            )
        return "\n".join(lines) + "\n"
