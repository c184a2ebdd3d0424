"""Write a procedural image set (PNG): the quickstart's embedded default dataset, no download needed.

  latentae demo-data quickstart-out/images --count 512 --size 96
"""
HELP = "write procedurally generated images (the quickstart's offline default dataset)"


def add_arguments(p):
    p.add_argument("output", help="folder to write demo-NNNNN.png into")
    p.add_argument("--count", type=int, default=256)
    p.add_argument("--size", type=int, default=96, help="side in pixels")
    p.add_argument("--seed", type=int, default=0)


def run(args):
    from latentae.demo import write_demo_images

    paths = write_demo_images(args.output, args.count, args.size, args.seed)
    print(f"wrote {len(paths)} images of {args.size}x{args.size} to {args.output}")
