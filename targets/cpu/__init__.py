"""The CPU target's planning: fusion, layouts and kernel choice as an IR rewrite
(:mod:`.planning`); the planned graph is lowered by :mod:`mcopt.targets.cpu.lower_planned`."""
