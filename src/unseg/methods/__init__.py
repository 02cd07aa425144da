"""The built-in methods' declarations, one light module per stage (no torch, no numpy): each method's name, the JSON
Schema of its settings (defaults and descriptions), what it reads of the feature store, the attributes its stage
runner reads, and the ``"module:function"`` its function is imported from when it is first called
(:func:`unseg.config.registry.declare`).

A registry imports its stage's module here on its first lookup, so the config schema, its validation, the workflow's
parsing and ``unseg methods`` know every method without importing the stage modules (torch, timm). A plugin's method
is registered with the decorator :func:`unseg.config.registry.register` instead.
"""
