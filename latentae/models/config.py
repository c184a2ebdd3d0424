"""The `model:` section of a config: one dataclass per family whose fields are its model class's constructor
arguments (the families: latentae/models/families.py). `ModelConfig(family=..., **keys)` and a YAML `model:`
mapping both build the config of the family they name."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from latentae.config import ConfigError


@dataclass
class ModelConfig:
    """Base of the family configs (KLConfig, VQConfig, WrappedConfig). `family` picks the config class; a key
    that another family takes but this one does not is named as such."""

    family: str = "kl"
    # keys a fine-tune (train.init_from) may set over the pretrained model's: training-time settings, never the
    # architecture; None in them means "the pretrained model's"
    FINETUNE_KEYS: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *args, **keys):
        # ModelConfig(...) makes the named family's config; Python then runs that class's __init__ on it
        return super().__new__(ModelConfig.section_class(keys) if cls is ModelConfig else cls)

    @classmethod
    def section_class(cls, data: dict, where: str = "model.") -> type[ModelConfig]:
        """The config class of the family `data` (a `model:` mapping) names (latentae.config.from_dict asks)."""
        from latentae.models.families import FAMILIES, families_text

        family = data.get("family", "kl")
        if not isinstance(family, str) or family not in FAMILIES:
            raise ConfigError(f"config key '{where}family': {family!r} is not a model family ({families_text()})")
        target = FAMILIES[family].config
        if not issubclass(target, cls):
            raise ConfigError(f"config key '{where}family': {family} is not described by {cls.__name__}")
        for key in data:
            takers = [name for name, f in FAMILIES.items() if key in config_keys(f.config)]
            if key not in config_keys(target) and takers:
                raise ConfigError(f"config key '{where}{key}' does not apply to model.family={family} (a key of "
                                  f"model.family {' / '.join(takers)}){target.foreign_key_hint(family)}")
        return target

    def __post_init__(self):
        from latentae.models.families import FAMILIES

        if self.family not in FAMILIES or FAMILIES[self.family].config is not type(self):
            raise ConfigError(f"config key 'model.family': {type(self).__name__} does not describe model.family="
                              f"{self.family}")

    @classmethod
    def foreign_key_hint(cls, family: str) -> str:
        """What to write instead of a key of another family."""
        return ""

    def finetune_settings(self) -> dict:
        """The FINETUNE_KEYS this config sets (not None): what a fine-tune changes on the pretrained model."""
        return {k: getattr(self, k) for k in self.FINETUNE_KEYS if getattr(self, k) is not None}

    def apply_to(self, model) -> None:
        """Set finetune_settings() on `model`, loaded for a fine-tune (its class has a setter for each key)."""
        from latentae.models.families import family_of

        settings = self.finetune_settings()
        if settings and family_of(model).name != self.family:
            raise ConfigError(f"config key 'model.{next(iter(settings))}' applies to model.family={self.family}, but "
                              f"train.init_from is a {family_of(model).name} model")
        for key, value in settings.items():
            setattr(model, key, value)

    def at_resolution(self, resolution: int) -> ModelConfig:
        """This config for a model trained on `resolution`-px images: diffusers' tile size (`sample_size`) set to it
        where the family has one."""
        if "sample_size" in config_keys(type(self)):
            return dataclasses.replace(self, sample_size=resolution)
        return self

    def model_kwargs(self) -> dict:
        """Constructor arguments of the model class this config describes."""
        from latentae.config import to_dict

        kwargs = to_dict(self)
        del kwargs["family"]
        return kwargs

    @classmethod
    def describing(cls, model, family: str) -> ModelConfig:
        """The config of family `family` that builds `model`'s architecture."""
        import typing

        from latentae.config import convert_value

        hints = typing.get_type_hints(cls)
        values = {k: convert_value(v, hints[k], f"model.{k}") for k, v in model.config.items()
                  if k in config_keys(cls) and k != "family"}
        return cls(family=family, **values)


def config_keys(cls: type) -> list[str]:
    """The keys a config class reads from YAML."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def check_block_channels(key: str, channels: list[int], norm_num_groups: int) -> None:
    """The widths of the standard VAE blocks: at least one level, each divisible by the group norm's groups."""
    if len(channels) < 1:
        raise ConfigError(f"config key 'model.{key}' needs at least one level")
    bad = [c for c in channels if c % norm_num_groups]
    if bad:
        raise ConfigError(f"config key 'model.{key}': {bad} not divisible by model.norm_num_groups={norm_num_groups}")


def init_keys(cls: type) -> list[str]:
    """The keyword arguments `cls.__init__` takes (a diffusers class: the config.json keys it reads)."""
    import inspect

    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def config_of(model) -> ModelConfig:
    """The config describing an existing model (e.g. one opened with latentae.load for fine-tuning)."""
    from latentae.models.families import family_of

    family = family_of(model)  # the config family of its class (a Qwen-Image model's family is kl, this qwenimage)
    return family.config.describing(model, family.name)
