"""Configs: the dataclasses of every stage (:mod:`.schema`) and the one loader (:mod:`.loader`)."""
from mobilefacenet_k210.config.loader import (PACKAGED, ConfigError, apply_overrides, check_choice, from_dict, load,
                                              merge, read_file, resolve, to_dict)
from mobilefacenet_k210.config.schema import (
    ACTIVATIONS, AUGMENTATIONS, CALIBRATE_METHODS, DETECTORS, EMBEDDING_HEADS, HEAD_INITS, HEADS, MARGIN_HEADS, OPTIMIZERS,
    PHASE_INITS, POLICY_ACTIONS, POLICY_PRESETS, RUNNERS, SELECT_MODES, STRATEGIES, W_QUANT_TYPES, BoardConfig,
    BuildConfig, DemoConfig, EvalConfig, ExportConfig, ModelConfig, PhaseConfig, PipelineConfig, PolicyConfig,
    PolicyRule, TrainConfig)
