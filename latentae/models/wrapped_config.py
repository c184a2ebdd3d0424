"""`model:` of the families that hold another class untouched (diffusers' AutoencoderDC, AutoencoderTiny, the
image VAEs; latentae's TAESDAutoencoder): that class's own keyword arguments, under `diffusers:`."""
from __future__ import annotations

from dataclasses import dataclass, field

from latentae.models.config import ModelConfig, init_keys


def built_class(family: str) -> type:
    """The class a wrapped family's `diffusers:` keys construct (a diffusers class, or the model class itself)."""
    from latentae.models.families import FAMILIES

    model = FAMILIES[family].model
    return getattr(model, "diffusers_class", model)


@dataclass
class WrappedConfig(ModelConfig):
    """A family whose model holds its class untouched (`vae`), built from that class's own keys."""

    family: str
    diffusers: dict = field(default_factory=dict)  # the keyword arguments of its class (its config.json keys)

    def __post_init__(self):
        from latentae.config import unknown_key_error

        super().__post_init__()
        takes = init_keys(built_class(self.family))
        for key in self.diffusers:
            if key not in takes:
                raise unknown_key_error(key, "model.diffusers.", takes)

    @classmethod
    def foreign_key_hint(cls, family: str) -> str:
        return f": put {built_class(family).__name__}'s own keys under model.diffusers"

    def model_kwargs(self) -> dict:
        return dict(self.diffusers)

    @classmethod
    def describing(cls, model, family: str) -> WrappedConfig:
        # the keys its class takes (AutoencoderTiny's config.json carries one more, block_out_channels, that its own
        # from_pretrained ignores)
        takes = init_keys(built_class(family))
        return cls(family=family, diffusers={k: v for k, v in model.config.items() if k in takes})
