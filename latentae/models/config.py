"""The `model:` section of a config: one dataclass for both families, checked against the family."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from latentae.config import ConfigError

# Fields that only one family reads, with the value that means "left alone".
_KL_ONLY = {"use_quant_conv": True, "use_post_quant_conv": True, "shift_factor": None, "latent_norm": None}
_VQ_ONLY = {"vq_embed_dim": None, "quantizer": {}}
# family -> the class it builds from model.diffusers (diffusers' own, or latentae's TAESDAutoencoder)
WRAPPED_FAMILIES = {"dc": "AutoencoderDC", "tiny": "AutoencoderTiny", "taesd": "TAESDAutoencoder",
                    "rae": "AutoencoderRAE", "qwenimage": "AutoencoderKLQwenImage", "wan": "AutoencoderKLWan",
                    "hunyuanimage": "AutoencoderKLHunyuanImage"}
# no posterior, no codebook: the latent is the encoder's output (the last three above have a Gaussian posterior:
# their models' family is kl, which the loss and the evaluator key on)
DETERMINISTIC = ("dc", "tiny", "taesd", "rae")


@dataclass
class ModelConfig:
    family: Literal["kl", "vq", "dc", "tiny", "taesd", "rae", "qwenimage", "wan", "hunyuanimage"] = "kl"  # kl:
    # Gaussian posterior (SD VAE, FLUX.2); vq: quantized tokenizer; dc: DC-AE (diffusers AutoencoderDC); tiny:
    # TAESD-style AutoencoderTiny; taesd: the TAESD family in its authors' layout (TAEF2's pool branch, TAESANA's
    # f32); rae: AutoencoderRAE; these four deterministic. qwenimage / wan / hunyuanimage: AutoencoderKLQwenImage /
    # AutoencoderKLWan / AutoencoderKLHunyuanImage, Gaussian posteriors (latentae/models/image_vaes.py)
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])  # one per level; f = 2^(n-1)
    layers_per_block: int = 2  # resnets per encoder level (the decoder uses one more, as in diffusers)
    latent_channels: int = 4  # kl: latent channels; vq: encoder output channels before quant_conv
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True  # self-attention in the mid blocks
    sample_size: int = 256  # diffusers' tiling tile size; a training run sets it to data.resolution
    scaling_factor: float = 0.18215  # written to the export; `latentae stats` measures the right one
    force_upcast: bool = True  # tells diffusers pipelines to decode in fp32 (SDXL's fp16 overflow)
    shift_factor: float | None = None  # kl only: SD3/FLUX-style latent shift
    use_quant_conv: bool = True  # kl only: 1x1 conv on the moments (SD: yes, SD3/FLUX: no)
    use_post_quant_conv: bool = True  # kl only
    latent_norm: Literal["flux2"] | None = None  # kl only: flux2 = FLUX.2's 2x2 patchify + batch-norm latent
    # statistics (`latentae stats --write` fills them); exports to AutoencoderKLFlux2
    vq_embed_dim: int | None = None  # vq only: channels entering the quantizer (default latent_channels)
    quantizer: dict = field(default_factory=dict)  # vq only: {kind: vq|simvq|ibq|bsq|fsq|lfq|gumbel|residual|vqvae2, **its options}
    diffusers: dict = field(default_factory=dict)  # the WRAPPED_FAMILIES only: the keyword arguments of their class
    # (AutoencoderDC, AutoencoderTiny, ...: their config.json keys), passed through; every other key is for kl / vq

    def __post_init__(self):
        if self.family in WRAPPED_FAMILIES:
            self._check_wrapped()
            return
        if self.diffusers:
            raise ConfigError(f"config key 'model.diffusers' applies to model.family {' / '.join(WRAPPED_FAMILIES)}, "
                              f"not {self.family}")
        other = _VQ_ONLY if self.family == "kl" else _KL_ONLY
        for name, untouched in other.items():
            if getattr(self, name) != untouched:
                raise ConfigError(f"config key 'model.{name}' does not apply to model.family={self.family}")
        if len(self.block_out_channels) < 1:
            raise ConfigError("config key 'model.block_out_channels' needs at least one level")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(f"config key 'model.block_out_channels': {bad} not divisible by "
                              f"model.norm_num_groups={self.norm_num_groups}")
        if self.family == "vq":
            from latentae.quantizers import check_quantizer_spec

            self.quantizer = check_quantizer_spec(self.quantizer, where="model.quantizer")

    def _check_wrapped(self) -> None:
        """The wrapped families read model.diffusers only: another key set away from its default is named, and so is a
        diffusers key the class does not take."""
        import dataclasses

        for f in dataclasses.fields(self):
            if f.name in ("family", "diffusers", "sample_size"):
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if getattr(self, f.name) != default:
                raise ConfigError(f"config key 'model.{f.name}' does not apply to model.family={self.family}: "
                                  f"put {WRAPPED_FAMILIES[self.family]}'s own keys under model.diffusers")
        takes = wrapped_init_keys(self.family)
        for key in self.diffusers:
            if key not in takes:
                from latentae.config import unknown_key_error

                raise unknown_key_error(key, "model.diffusers.", takes)

    def model_kwargs(self) -> dict:
        """Constructor arguments of the model class this config describes."""
        from latentae.config import to_dict

        if self.family in WRAPPED_FAMILIES:
            return dict(self.diffusers)
        kwargs = to_dict(self)
        del kwargs["family"], kwargs["diffusers"]
        for name in (_VQ_ONLY if self.family == "kl" else _KL_ONLY):
            del kwargs[name]
        return kwargs


def init_keys(cls: type) -> list[str]:
    """The keyword arguments `cls.__init__` takes (a diffusers class: the config.json keys it reads)."""
    import inspect

    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def wrapped_init_keys(family: str) -> list[str]:
    """The keyword arguments of the class a wrapped family's model builds."""
    import diffusers

    from latentae.models import taesd

    return init_keys(getattr(diffusers, WRAPPED_FAMILIES[family], None) or getattr(taesd, WRAPPED_FAMILIES[family]))


def config_of(model) -> ModelConfig:
    """The ModelConfig describing an existing model (e.g. one opened with latentae.load for fine-tuning)."""
    import dataclasses

    from latentae.models import MODEL_CLASSES

    # the config family of its class (a Qwen-Image model's family is kl, its config family qwenimage)
    family = next(name for name, cls in MODEL_CLASSES.items() if type(model) is cls)
    if family in WRAPPED_FAMILIES:  # the keys its class takes (AutoencoderTiny's config.json carries one more,
        # block_out_channels, that its own from_pretrained ignores)
        return ModelConfig(family=family, diffusers={k: v for k, v in model.config.items()
                                                     if k in wrapped_init_keys(family)})
    names = {f.name for f in dataclasses.fields(ModelConfig)} - {"family", "diffusers"}
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items() if k in names}
    if model.family == "vq":
        values["quantizer"] = dict(values.get("quantizer") or {"kind": "vq"})
    return ModelConfig(family=family, **values)
