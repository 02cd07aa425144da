"""Registries of methods, one per stage, in the style of timm's ``register_model``.

A method is one decorated function with keyword-only settings and the JSON Schema of those settings::

    from unseg.config.registry import register

    @register("masks", "my_masks", schema={"threshold": {"type": "number", "default": 0.5}})
    def my_masks(batch, *, threshold):
        ...

The config's ``method`` picks it (``masks.{variant}: {method: my_masks, features: ..., threshold: 0.3}``); the
config schema gets one ``if/then`` branch per registered method (:mod:`unseg.config.schema`), so its settings are
validated
and their defaults stated once, in the schema given here. A researcher's own module is loaded with
:func:`load_plugins` (the config's ``plugins:`` list) before validation, so a method is added without forking.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The stages whose config variants pick a ``method``; each stage module documents what its methods receive.
STAGES = ("masks", "saliency", "pseudolabels", "train", "contrast", "instances")


@dataclass(frozen=True)
class Method:
    """A registered method: its stage, name, function and the JSON Schema ``properties`` of its settings."""

    stage: str
    name: str
    function: Callable[..., Any]
    schema: Mapping[str, Any]
    required: tuple[str, ...] = ()
    description: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def settings(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The method's own settings out of a variant's settings, with the schema's defaults filled in."""
        settings = {key: value for key, value in given.items() if key in self.schema}
        for key, prop in self.schema.items():
            if key not in settings and "default" in prop:
                settings[key] = prop["default"]
        missing = [key for key in self.required if key not in settings]
        if missing:
            raise KeyError(f"{self.stage} method {self.name!r}: missing setting(s) {missing}")
        return settings

    def __call__(self, *args: Any, settings: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """Call the function with the schema-completed ``settings`` as keywords (plus any further ``kwargs``)."""
        return self.function(*args, **self.settings(settings or {}), **kwargs)


class Registry:
    """Name → :class:`Method` for one stage."""

    def __init__(self, stage: str):
        self.stage = stage
        self._methods: dict[str, Method] = {}

    def register(self, name: str | None = None, *, schema: Mapping[str, Any] | None = None,
                 required: Iterable[str] = (), **attributes: Any) -> Callable[[Callable], Callable]:
        """Decorator: register ``function`` under ``name`` (default: its ``__name__``).

        Args:
            schema: JSON Schema ``properties`` of the settings, one entry per keyword-only parameter of the function
                that the config sets (with its ``default`` and a ``description``).
            required: settings without a default that a config must give.
            attributes: facts the stage runner reads (e.g. ``needs_images=True``).
        """

        def decorator(function: Callable) -> Callable:
            method_name = name or function.__name__
            properties = dict(schema or {})
            parameters = inspect.signature(function).parameters.values()
            keywords = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)  # settings passed on whole
            unknown = sorted(set(properties) - keywords)
            if unknown and not takes_any:
                raise TypeError(f"{self.stage} method {method_name!r}: schema names {unknown}, which are not "
                                f"keyword-only parameters of {function.__qualname__}")
            description = inspect.getdoc(function) or ""
            self._methods[method_name] = Method(self.stage, method_name, function, properties, tuple(required),
                                                description.split("\n\n")[0], dict(attributes))
            return function

        return decorator

    def get(self, name: str) -> Method:
        try:
            return self._methods[name]
        except KeyError:
            raise KeyError(f"no {self.stage} method named {name!r} (registered: {self.names()}); a method of your "
                           "own is registered with unseg.config.registry.register and loaded through the config's "
                           "'plugins'") from None

    def names(self) -> list[str]:
        return sorted(self._methods)

    def __contains__(self, name: str) -> bool:
        return name in self._methods

    def __iter__(self):
        return iter(self._methods.values())


REGISTRIES: dict[str, Registry] = {stage: Registry(stage) for stage in STAGES}


def register(stage: str, name: str | None = None, **kwargs: Any) -> Callable[[Callable], Callable]:
    """Register a method of ``stage`` (see :meth:`Registry.register`)."""
    if stage not in REGISTRIES:
        raise KeyError(f"no stage {stage!r} takes methods (stages: {list(REGISTRIES)})")
    return REGISTRIES[stage].register(name, **kwargs)


def load_plugins(plugins: Iterable[str], base: str | Path = ".") -> list[str]:
    """Import each plugin: a module name (``my_lab.methods``) or a path to a ``.py`` file (relative to ``base``).

    Importing registers the plugin's methods. Returns the module names imported. Raises ImportError naming the
    plugin when it cannot be imported.
    """
    loaded = []
    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin) if Path(plugin).is_absolute() else Path(base) / plugin
            if not path.is_file():
                raise ImportError(f"plugins: no file {str(path)!r}")
            module_name = f"unseg_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            loaded.append(module_name)
        else:
            try:
                importlib.import_module(plugin)
            except ImportError as error:
                raise ImportError(f"plugins: cannot import {plugin!r} ({error})") from error
            loaded.append(plugin)
    return loaded
