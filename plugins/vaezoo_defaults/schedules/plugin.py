"""Registers the learning-rate schedules `constant`, `cosine`, `step` and `plateau`."""

import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"  # the plugin API versions it is written for (docs/plugins.md)


@vaezoo.hookimpl
def register_schedules(register):
    module = "vaezoo_defaults.schedules.schedules"
    register("constant", f"{module}:Constant", summary="The learning rate as set (after an optional warm-up)")
    register("cosine", f"{module}:Cosine", summary="Cosine decay to min_factor over the run (Loshchilov & Hutter 2017)")
    register("step", f"{module}:Step", summary="Multiplied by gamma every step_epochs epochs")
    register("plateau", f"{module}:Plateau", summary="Multiplied by gamma when the monitored loss stops improving")
