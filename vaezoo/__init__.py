"""vaezoo: a plugin-based model zoo for variational autoencoders.

Importing this package imports nothing (not even pluggy): the console script and `python -m vaezoo`
run it before they can install their SIGTERM handler, so it must take no time. The rest loads on
first use.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.5.0"

# name -> module that defines it; imported on first attribute access.
_LAZY = {
    "build": "vaezoo.api",
    "fit": "vaezoo.api",
    "load": "vaezoo.loading",
    "save": "vaezoo.files.model_file",
    "push": "vaezoo.sharing.publish",
    "resolve_recipe": "vaezoo.recipes.resolve",
    "list_components": "vaezoo.plugins.manager",
    "get_registry": "vaezoo.plugins.manager",
    "Model": "vaezoo.components",
    "Encoder": "vaezoo.components",
    "Decoder": "vaezoo.components",
    "Prior": "vaezoo.components",
    "Loss": "vaezoo.components",
    "LossParts": "vaezoo.components",
    "EncoderDecoderFamily": "vaezoo.components",
    "Dataset": "vaezoo.components",
    "Sampler": "vaezoo.components",
    "LRSchedule": "vaezoo.components",
    "Logger": "vaezoo.components",
    "RunInfo": "vaezoo.components",
    "VaezooError": "vaezoo.errors",
    "PLUGIN_API": "vaezoo.plugins.api_version",  # the plugin API's version: docs/plugins.md, Plugin API versions
}

__all__ = ["__version__", "hookimpl", *_LAZY]


def __getattr__(name: str) -> object:
    if name == "hookimpl":  # the marker of plugin hooks: `@vaezoo.hookimpl`
        import pluggy

        value = globals()["hookimpl"] = pluggy.HookimplMarker("vaezoo")
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vaezoo' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
