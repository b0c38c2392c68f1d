"""The one entry point: `mbtasks COMMAND ...`."""
import argparse
import json
import sys

from .errors import MbtasksError


def _resolution(text: str) -> int | tuple[int, int]:
    """'224' -> 224, '320x512' -> (320, 512) (height x width)."""
    try:
        if "x" in text:
            h, w = text.lower().split("x")
            return int(h), int(w)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be N or HxW, got {text!r}") from None


def cmd_profile(args: argparse.Namespace) -> None:
    from .models import build_model
    from .profiling import PAPER_FIGURES, example_input, profile

    if args.model is None:
        print(f"{'model':<22}{'width':>6}{'res':>5}{'params':>12}{'paper':>8}{'MAdds':>10}{'paper':>8}"
              f"{'latency ms':>12}")
        for (name, width, res), (paper_params, paper_madds) in PAPER_FIGURES.items():
            figures = profile(build_model(name, width_mult=width), example_input(res), args.runs)
            print(f"{name:<22}{width:>6}{res:>5}{figures['params']:>12,}{paper_params / 1e6:>7.1f}M"
                  f"{figures['madds'] / 1e6:>9.1f}M{paper_madds / 1e6:>7.0f}M{figures['latency_ms']:>12.2f}")
        return
    options = {"width_mult": args.width} if args.width is not None else {}
    figures = profile(build_model(args.model, **options), example_input(args.resolution), args.runs)
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{args.model}: {figures['params']:,} parameters, {figures['madds'] / 1e6:.1f}M multiply-adds, "
              f"{figures['latency_ms']:.2f} ms at batch 1")


def cmd_weights_import(args: argparse.Namespace) -> None:
    from .backbones.weights import import_weights

    saved = import_weights(args.source, args.src, args.model, args.out)
    print(f"wrote {args.out}: {saved.model} ({len(saved.state_dict)} tensors from {args.source}, "
          f"options {saved.options})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mbtasks", description="Vision tasks on MobileNet backbones.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("profile", help="parameters, multiply-adds and CPU latency")
    p.add_argument("--model", help="model name (default: a table of the whole MobileNet family)")
    p.add_argument("--width", type=float, help="width multiplier")
    p.add_argument("--resolution", type=_resolution, default=224, help="N or HxW (default 224)")
    p.add_argument("--runs", type=int, default=30, help="timed runs for the median latency")
    p.add_argument("--json", action="store_true", help="print one JSON object: params, madds, latency_ms")
    p.set_defaults(func=cmd_profile)

    p = commands.add_parser("weights", help="import checkpoints from torchvision or timm")
    weights = p.add_subparsers(dest="weights_command", required=True)
    p = weights.add_parser("import", help="convert a torchvision / timm state-dict file to mbtasks' layout")
    p.add_argument("--from", dest="source", required=True, choices=["torchvision", "timm"])
    p.add_argument("src", help="state-dict file saved from the source model")
    p.add_argument("--model", required=True, help="mbtasks model name")
    p.add_argument("--out", required=True, help="mbtasks weights file to write")
    p.set_defaults(func=cmd_weights_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; user mistakes print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MbtasksError as error:
        print(f"mbtasks: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
