"""The hooks of the example plugin (this module is the ``autosam`` entry point)."""
from __future__ import annotations

from autosam import hookimpl

from .method import ExampleTinyMethod
from .planner import ExamplePlanner


@hookimpl
def register_methods(register):
    register(ExampleTinyMethod())


@hookimpl
def register_planners(register):
    register(ExamplePlanner())


@hookimpl
def plan_method_section(method_name, configuration_name, configuration):
    """More features for 2d (cheap) than for 3d patches; nothing for configurations we do not support."""
    if method_name != ExampleTinyMethod.name or configuration_name not in ExampleTinyMethod.configurations:
        return None
    return {"features": 16 if len(configuration.patch_size) == 2 else 8}


@hookimpl
def method_suitability():
    # A demonstration method is never a sensible default: vote well below the unet baseline (0.5).
    return [(ExampleTinyMethod.name, 0.01, "example plugin; a tiny network for demonstrations only")]
