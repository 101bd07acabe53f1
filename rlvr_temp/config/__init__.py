"""A run's configuration: the typed recipe schema (``RunConfig``), loaded from YAML with ``base:`` inheritance and
dotted overrides, validated in the driver, and passed typed to every actor.

The face of the package: ``RunConfig``, ``load_config``, ``save_config`` and ``ConfigError`` (from
:mod:`rlvr_temp.config.schema`, which also holds every section class). Reading YAML and run directories:
:mod:`rlvr_temp.config.recipe`; the sections by area: ``cluster``, ``sampling``, ``training``; the generated
reference (docs/configuration.md): :mod:`rlvr_temp.config.reference`.
"""

from rlvr_temp.config.schema import ConfigError, RunConfig, load_config, save_config

__all__ = ["ConfigError", "RunConfig", "load_config", "save_config"]
