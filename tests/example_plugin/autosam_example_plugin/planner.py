"""``example_planner``: the default planner with the batch size capped, to show how to wrap a planner.

The default planner is looked up by name when planning (not at import), so this plugin works
whatever order plugins load in and picks up a replaced ``default`` planner too.
"""
from __future__ import annotations

from autosam.plugins import get_planner


class ExamplePlanner:
    name = "example_planner"
    description = "default planner with the batch size capped at max_batch_size (example plugin)"

    def __init__(self, base: str = "default", max_batch_size: int = 2):
        self.base = base
        self.max_batch_size = max_batch_size

    def plan(self, *args, plugin_system=None, **kwargs):
        """Plan with the ``base`` planner (same arguments), then cap every configuration's batch size.

        ``plugin_system`` (passed by autosam's planning when it plans with a specific plugin system)
        is where the base planner is looked up and is handed on to it; by default the global one.
        """
        if plugin_system is None:
            plans = get_planner(self.base).plan(*args, **kwargs)
        else:
            plans = plugin_system.planners.get(self.base).plan(*args, plugin_system=plugin_system, **kwargs)
        plans.planner = self.name
        for configuration in plans.configurations.values():
            configuration.batch_size = min(configuration.batch_size, self.max_batch_size)
        return plans
