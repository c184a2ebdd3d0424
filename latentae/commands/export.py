"""Write a model in the diffusers format (AutoencoderKL / VQModel) or, for quantizers VQModel cannot express,
in latentae's own format (config.json + safetensors).

SOURCE is anything `latentae.load` opens: a latentae export, a diffusers AutoencoderKL/VQModel directory,
or an original LDM/CompVis .ckpt/.safetensors file (architecture read off the weights).

  latentae export sd-v1-5-vae.ckpt out/sd-vae --scaling-factor 0.18215
"""
import json

HELP = "convert/export a model to a diffusers directory"


def add_arguments(p):
    p.add_argument("source", help="model directory or LDM checkpoint file")
    p.add_argument("output", help="directory to write")
    p.add_argument("--scaling-factor", type=float, help="set scaling_factor (LDM files do not record it)")
    p.add_argument("--shift-factor", type=float, help="set shift_factor (SD3/FLUX-style KL models)")


def run(args):
    from latentae.exporting import export
    from latentae.loading import load

    model = load(args.source)
    for key in ("scaling_factor", "shift_factor"):
        value = getattr(args, key)
        if value is not None:
            model.register_to_config(**{key: value})
    out = export(model, args.output, metadata={"source": str(args.source)})
    fmt = json.loads((out / "latentae.json").read_text())["format"]
    how = f"diffusers.{fmt}.from_pretrained" if fmt != "latentae" else "latentae.load"
    print(f"exported {type(model).__name__} from {args.source} to {out} (format {fmt}; open with {how})")
