"""The target side of :class:`mcopt.pass_manager.TargetServices`: what a pass may ask of the
compile target (today: time a 3x3 conv's direct and Winograd kernels). TVM is imported only when a
service is used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TargetServices:
    name: str

    def measure_winograd(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        from mcopt.targets.cpu.kernels.winograd_nchwc import cached_measurement

        return cached_measurement(*args, **kwargs)


def services_for(target: str) -> TargetServices:
    """The services of the target named `target` (checked against the registry)."""
    from mcopt.targets.registry import get_target

    return TargetServices(get_target(target).name)


__all__ = ["TargetServices", "services_for"]
