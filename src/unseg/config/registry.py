"""Registries of methods, one per stage: light declarations, functions imported on first call.

A built-in method is *declared* in its stage's module of :mod:`unseg.methods` (which imports no torch): its name,
the JSON Schema of its settings, what it reads of the feature store and a reference to its function, a string
``"module:function"`` imported when the method is first called::

    declare("masks", "spectral_multik", "unseg.stages.masks:spectral_multik", schema=SPECTRAL_SCHEMA,
            description="...", reads=GRID)

So the config schema, its validation and the workflow's parsing know every method without importing torch. A
researcher's own method is *registered* with the decorator, in the style of timm's ``register_model``::

    from unseg.config.registry import register

    @register("masks", "my_masks", schema={"threshold": {"type": "number", "default": 0.5}})
    def my_masks(batch, *, threshold):
        ...

The config's ``method`` picks it (``masks.{variant}: {method: my_masks, features: ..., threshold: 0.3}``); the
config schema gets one ``if/then`` branch per method (:mod:`unseg.config.schema`), so its settings are validated
and their defaults stated once, in the schema given here. A researcher's module is loaded with :func:`load_plugins`
(the config's ``plugins:`` list) before validation, so a method is added without forking.

A registry loads its stage's declarations the first time it is asked for a method. The decorator applied to a
declared method (same stage and name, same schema) attaches the function to the declaration instead of failing.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

# The stages whose config variants pick a ``method``; each stage module documents what its methods receive.
STAGES = ("masks", "saliency", "pseudolabels", "train", "contrast", "instances")

# The light module declaring each registry's built-in methods (imported on the registry's first lookup).
DECLARATIONS = {**{stage: f"unseg.methods.{stage}" for stage in STAGES}, "dataset": "unseg.methods.formats"}

# The shape of each store facet (unseg.features.store), for the methods' ``reads``: 'keys@6' is shaped as 'keys'.
GRID = "(h, w, D)"
FACET_SHAPES = {"keys": GRID, "queries": GRID, "values": GRID, "tokens": GRID, "embeddings": GRID, "cls": "(D,)",
                "attn": "(heads, h, w)"}


def facet_shape(facet: str) -> str | None:
    """The array shape one image's ``facet`` has in a feature store (``"(h, w, D)"``), or None for an unknown name."""
    return FACET_SHAPES.get(facet.split("@")[0])


@dataclass(frozen=True)
class Reference:
    """A value named by ``"module:qualified.name"``, imported when :meth:`resolve` is called; with ``arguments``,
    what that callable returns when called with them (a factory's product, e.g. a trainer's ``build_model``)."""

    target: str
    arguments: tuple[Any, ...] = ()

    def resolve(self) -> Any:
        module_name, _, qualname = self.target.partition(":")
        if not qualname:
            raise ValueError(f"reference {self.target!r}: expected 'module:name'")
        value: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            value = getattr(value, part)
        return value(*self.arguments) if self.arguments else value


class Attributes(Mapping):
    """A method's attributes (facts its stage runner reads: ``needs_images``, ``build_model``, ...); a
    :class:`Reference` among them is imported when read."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        value = self._values[key]
        return value.resolve() if isinstance(value, Reference) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Attributes({self._values!r})"


def check_signature(method: Method, function: Callable) -> None:
    """Raise a TypeError when ``method``'s schema names a setting ``function`` does not take as a keyword-only
    parameter (a function taking ``**settings`` takes any)."""
    parameters = inspect.signature(function).parameters.values()
    keywords = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)  # settings passed on whole
    unknown = sorted(set(method.schema) - keywords)
    if unknown and not takes_any:
        raise TypeError(f"{method.stage} method {method.name!r}: schema names {unknown}, which are not "
                        f"keyword-only parameters of {function.__qualname__}")


@dataclass(frozen=True)
class Method:
    """A method of a stage: its name, the JSON Schema ``properties`` of its settings and its function.

    Attributes:
        target: the function, or the ``"module:name"`` string it is imported from on first use (:attr:`function`).
        reads: what the method reads of the feature store: ``{"facet": the setting naming the facet, "shape": the
            facet's shape}`` (``{"facet": "facet", "shape": "(h, w, D)"}``), or None (no facet: e.g. masks read
            from a folder). The config's validation checks the named facet has that shape.
    """

    stage: str
    name: str
    target: Callable[..., Any] | str
    schema: Mapping[str, Any]
    required: tuple[str, ...] = ()
    description: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)
    reads: Mapping[str, str] | None = None

    @cached_property
    def function(self) -> Callable[..., Any]:
        """The method's function (imported on first use when declared by reference; its signature checked then)."""
        if not isinstance(self.target, str):
            return self.target
        function = Reference(self.target).resolve()
        check_signature(self, function)
        return function

    @property
    def location(self) -> str:
        """Where the function lives, ``"module:name"``, without importing it."""
        if isinstance(self.target, str):
            return self.target
        return f"{self.target.__module__}:{self.target.__qualname__}"

    @property
    def builtin(self) -> bool:
        """Whether the method is the project's (its function lives in the ``unseg`` package), not a plugin's."""
        return self.location.split(":")[0].split(".")[0] == "unseg"

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
    """Name → :class:`Method` for one stage; its built-in declarations (``declarations``, a module name) are
    imported on the first lookup."""

    def __init__(self, stage: str, declarations: str | None = None):
        self.stage = stage
        self._methods: dict[str, Method] = {}
        self._declarations = declarations

    def _load_declarations(self) -> None:
        if self._declarations is not None:
            module, self._declarations = self._declarations, None  # cleared first: the module calls declare()
            importlib.import_module(module)

    def declare(self, name: str, function: Callable[..., Any] | str, *, schema: Mapping[str, Any],
                description: str, required: Iterable[str] = (), reads: Mapping[str, str] | None = None,
                **attributes: Any) -> Method:
        """Add the method ``name``: its function (or ``"module:name"``, imported on first call), the JSON Schema
        ``properties`` of its settings (one per keyword-only parameter of the function the config sets, with its
        ``default`` and a ``description``), a one-line ``description``, the ``required`` settings without a default,
        what it ``reads`` of the store (:class:`Method`) and ``attributes`` its stage runner reads (a
        :class:`Reference` among them imported when read)."""
        method = Method(self.stage, name, function, dict(schema), tuple(required), description,
                        Attributes(attributes), dict(reads) if reads else None)
        self._methods[name] = method
        return method

    def register(self, name: str | None = None, *, schema: Mapping[str, Any] | None = None,
                 required: Iterable[str] = (), reads: Mapping[str, str] | None = None,
                 **attributes: Any) -> Callable[[Callable], Callable]:
        """Decorator: register ``function`` under ``name`` (default: its ``__name__``); the description is the first
        paragraph of its docstring.

        Args:
            schema: JSON Schema ``properties`` of the settings, one entry per keyword-only parameter of the function
                that the config sets (with its ``default`` and a ``description``).
            required: settings without a default that a config must give.
            reads: what it reads of the feature store (:class:`Method`).
            attributes: facts the stage runner reads (e.g. ``needs_images=True``).

        Raises:
            TypeError: the schema names a setting the function does not take; or the method is declared (in
                :mod:`unseg.methods`) with another schema.
        """

        def decorator(function: Callable) -> Callable:
            self._load_declarations()
            method_name = name or function.__name__
            declared = self._methods.get(method_name)
            if declared is not None and isinstance(declared.target, str):
                # The declaration's own function, decorated as well: attach it (same schema required).
                if dict(schema or {}) != dict(declared.schema) or tuple(required) != declared.required:
                    raise TypeError(f"{self.stage} method {method_name!r} is declared in "
                                    f"{DECLARATIONS.get(self.stage)} with another schema than "
                                    f"{function.__qualname__}'s registration")
                check_signature(declared, function)
                self._methods[method_name] = Method(self.stage, method_name, function, declared.schema,
                                                    declared.required, declared.description, declared.attributes,
                                                    declared.reads)
                return function
            check_signature(Method(self.stage, method_name, function, dict(schema or {})), function)
            self.declare(method_name, function, schema=dict(schema or {}), required=required, reads=reads,
                         description=(inspect.getdoc(function) or "").split("\n\n")[0], **attributes)
            return function

        return decorator

    def get(self, name: str) -> Method:
        self._load_declarations()
        try:
            return self._methods[name]
        except KeyError:
            raise KeyError(f"no {self.stage} method named {name!r} (registered: {self.names()}); a method of your "
                           "own is registered with unseg.config.registry.register and loaded through the config's "
                           "'plugins'") from None

    def names(self) -> list[str]:
        self._load_declarations()
        return sorted(self._methods)

    def __contains__(self, name: str) -> bool:
        self._load_declarations()
        return name in self._methods

    def __iter__(self) -> Iterator[Method]:
        self._load_declarations()
        return iter(list(self._methods.values()))


REGISTRIES: dict[str, Registry] = {stage: Registry(stage, DECLARATIONS[stage]) for stage in STAGES}
# The dataset formats (``dataset.format``): a registry of its own, not a stage's variants (unseg.data.formats).
DATASET_FORMATS = Registry("dataset", DECLARATIONS["dataset"])


def register(stage: str, name: str | None = None, **kwargs: Any) -> Callable[[Callable], Callable]:
    """Register a method of ``stage`` (see :meth:`Registry.register`)."""
    if stage not in REGISTRIES:
        raise KeyError(f"no stage {stage!r} takes methods (stages: {list(REGISTRIES)})")
    return REGISTRIES[stage].register(name, **kwargs)


def declare(stage: str, name: str, function: Callable[..., Any] | str, **kwargs: Any) -> Method:
    """Declare a method of ``stage`` (``"dataset"``: a dataset format) (see :meth:`Registry.declare`)."""
    registry = DATASET_FORMATS if stage == "dataset" else REGISTRIES.get(stage)
    if registry is None:
        raise KeyError(f"no stage {stage!r} takes methods (stages: {list(REGISTRIES)})")
    return registry.declare(name, function, **kwargs)


def load_all() -> None:
    """Load every registry's built-in declarations (the light modules of :mod:`unseg.methods`)."""
    for registry in [*REGISTRIES.values(), DATASET_FORMATS]:
        registry._load_declarations()


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
