"""One typed dataclass tree for a run: model, parallel, data (phases), optim, train, log.

Loaded from YAML, then `dotted.key=value` overrides, then validated. Every error is a
`ConfigError` whose message names the file and the field and says what was expected.
Nothing here touches torch.distributed: a config is validated before any process group exists.

    schema.py      the dataclasses, family trait defaults, size presets
    loading.py     YAML + overrides -> Config (types checked per field)
    validation.py  the rules, checked once per launch: every field rule when the config is loaded
                   (`load_config`), the grid rules against the world before process groups exist
"""

from .loading import apply_overrides, coerce, from_dict, load_config, parse_override
from .schema import (
    FAMILY_DEFAULTS,
    PRESETS,
    Config,
    ConfigError,
    DataConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    PhaseConfig,
    ResolvedModelConfig,
    SourceConfig,
    TrainConfig,
)
from .validation import validate_config, validate_world

__all__ = [
    "FAMILY_DEFAULTS",
    "PRESETS",
    "Config",
    "ConfigError",
    "DataConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "PhaseConfig",
    "ResolvedModelConfig",
    "SourceConfig",
    "TrainConfig",
    "apply_overrides",
    "coerce",
    "from_dict",
    "load_config",
    "parse_override",
    "validate_config",
    "validate_world",
]
