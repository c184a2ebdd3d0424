"""`model:` of the dc family: AutoencoderDC's own keys under `diffusers:`, and latentae's one key that AutoencoderDC
has no slot for, DC-AE 1.5's structured latent (kept in the export's latentae.json)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from latentae.models.wrapped_config import WrappedConfig, built_class


@dataclass
class DCConfig(WrappedConfig):
    # DC-AE 1.5: the leading-channel counts the latent serves, ascending, ending with diffusers.latent_channels
    # (train.sample_channels draws one per step); [] : a plain DC-AE
    structured_channels: list[int] = field(default_factory=list)

    def __post_init__(self):
        from latentae.config import ConfigError
        from latentae.models.dc import check_structured_channels

        super().__post_init__()
        full = self.diffusers.get("latent_channels", _default_latent_channels())
        try:
            check_structured_channels(self.structured_channels, full)
        except ValueError as e:
            raise ConfigError(f"config key 'model.structured_channels': {e}") from None

    def model_kwargs(self) -> dict:
        return {**super().model_kwargs(), **({"structured_channels": list(self.structured_channels)}
                                             if self.structured_channels else {})}

    @classmethod
    def describing(cls, model, family: str) -> DCConfig:
        return dataclasses.replace(super().describing(model, family),
                                   structured_channels=list(model.structured_channels))


def _default_latent_channels() -> int:
    import inspect

    return inspect.signature(built_class("dc").__init__).parameters["latent_channels"].default
