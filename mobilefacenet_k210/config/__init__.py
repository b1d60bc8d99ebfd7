"""Configs: the dataclasses of every stage (:mod:`.data`, :mod:`.training`, :mod:`.deploy`, :mod:`.evaluation`,
:mod:`.demo`) and the one loader (:mod:`.loader`)."""
from mobilefacenet_k210.config.loader import (PACKAGED, ConfigError, apply_overrides, check_choice, from_dict, load,
                                              merge, read_file, resolve, to_dict)
from mobilefacenet_k210.config.data import (
    AUGMENTATIONS, BuildConfig, DETECTORS, POLICY_ACTIONS, POLICY_PRESETS, PolicyConfig, PolicyRule, RUNNERS,
    SELECT_MODES)
from mobilefacenet_k210.config.deploy import BoardConfig, CALIBRATE_METHODS, ExportConfig, W_QUANT_TYPES
from mobilefacenet_k210.config.evaluation import DEFAULT_GALLERY_MODE, EvalConfig, GALLERY_MODES, recorded_gallery_mode
from mobilefacenet_k210.config.demo import DemoConfig, HeldOutRunConfig, PretrainedConfig
from mobilefacenet_k210.config.training import (
    ACTIVATIONS, EMBEDDING_HEADS, EMBEDDING_LOSS_HEADS, HEADS, HEAD_INITS, LR_SCHEDULES, MARGIN_HEADS, ModelConfig,
    OPTIMIZERS, PHASE_INITS, PhaseConfig, PipelineConfig, STRATEGIES, TrainConfig)
