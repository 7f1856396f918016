"""``conceptsim data ...``: build, fetch and summarise datasets from the command line.

:func:`register` adds the ``data`` command to the top-level parser's subparsers; every leaf sets
``func`` to a function of the parsed arguments that returns the exit code (0 ok, 2 dataset error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conceptsim.data.coco import DatasetError


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts and sizes; the top-level CLI uses it too)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _build(args: argparse.Namespace) -> int:
    from conceptsim.data import registry

    overrides = {k: getattr(args, k) for k in ("n", "size", "seed") if getattr(args, k) is not None}
    for k in ("styles", "categories", "mode"):
        if getattr(args, k, None):
            if args.name != "coco-icons":
                raise ValueError(f"--{k} applies to coco-icons only, not {args.name}")
            value = getattr(args, k)
            overrides[k] = value if k == "mode" else [v.strip() for v in value.split(",") if v.strip()]
    if args.out is None:
        src = registry.ensure_dataset(args.name, smoke=args.smoke, **overrides)
        print(src.annotation_file)
        return 0
    params = registry.build_params(args.name, args.smoke, **overrides)
    report = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    check_writable_folder(Path(args.out), "--out")
    print(registry.build_into(args.name, Path(args.out), params, overwrite=args.overwrite, report=report))
    return 0


def check_writable_folder(out: Path, option: str) -> None:
    """A :class:`DatasetError` naming ``option`` unless a folder can be made at ``out`` (its parent is created
    and a file can be written there): checked before any work, so a bad path never surfaces as an OS error on
    some temporary name mid-build."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{option} {out}: exists and is not a folder")
    _check_parent(out, option, "make a folder")


def check_writable_file(out: Path, option: str) -> None:
    """A :class:`DatasetError` naming ``option`` unless a file can be written at ``out`` (its parent is created
    and a file can be written there): checked before any work, as :func:`check_writable_folder`."""
    if out.is_dir():
        raise DatasetError(f"{option} {out}: is a folder; expected a file path such as {out / 'summary.csv'}")
    _check_parent(out, option, "write a file")


def _check_parent(out: Path, option: str, what: str) -> None:
    import tempfile

    above = next((p for p in out.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise DatasetError(f"{option} {out}: {above} is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as exc:
        raise DatasetError(f"{option} {out}: cannot {what} there ({exc.strerror or exc})") from None


def check_figure_format(path: Path, option: str) -> None:
    """A :class:`DatasetError` naming ``option`` unless matplotlib can save a figure in the format of ``path``'s
    suffix (none: PNG), checked before any work so that an unsupported one leaves no summary CSV behind."""
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = sorted(FigureCanvasBase.get_supported_filetypes())
    if fmt not in supported:
        raise DatasetError(f"{option} {path}: figure format {fmt!r} is not supported; expected a suffix among "
                           + ", ".join(f".{f}" for f in supported))


def _fetch(args: argparse.Namespace) -> int:
    from conceptsim.data import registry
    from conceptsim.data.coco import load_annotations

    src = registry.ensure_dataset(args.name, root=args.root)
    load_annotations(src.annotation_file)  # accept no copy whose annotation file is broken
    print(f"{src.annotation_file}\n{src.image_dir}\nsha256 {src.sha256}")
    return 0


def _fetch_icons(args: argparse.Namespace) -> int:
    from conceptsim.data.icon_sources import fetch_icon_packages

    for p in fetch_icon_packages(args.packages or None):
        print(p)
    return 0


def _summary(args: argparse.Namespace) -> int:
    from conceptsim.data import registry
    from conceptsim.data.summary import write_summary

    if args.name not in registry.DATASETS and not Path(args.name).is_file():
        raise DatasetError(f"{args.name}: neither a dataset name ({', '.join(sorted(registry.DATASETS))}) "
                           "nor an existing COCO annotation file")
    # the outputs, before any dataset is built or read: a bad path or figure format never costs the work
    check_writable_file(Path(args.out), "--out")
    if args.figure:
        check_figure_format(Path(args.figure), "--figure")
        check_writable_file(Path(args.figure), "--figure")
    if args.name in registry.DATASETS:
        src = registry.ensure_dataset(args.name, smoke=args.smoke) if registry.DATASETS[args.name].kind == "embedded" \
            else registry.ensure_dataset(args.name, root=args.root)
    else:
        src = Path(args.name)  # an annotation file
    rows = write_summary(src, args.out, args.figure, max_images=args.max_images)
    print(f"{args.out}: {len(rows)} rows" + (f"; figure {args.figure}" if args.figure else ""))
    return 0


def _guarded(func):
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (DatasetError, KeyError, ValueError) as e:
            print(f"conceptsim data: error: {e}", file=sys.stderr)
            return 2

    return run


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``data {build,fetch,summary}`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    data = subparsers.add_parser("data", help="build, fetch and summarise concept datasets")
    sub = data.add_subparsers(dest="data_command", required=True)

    b = sub.add_parser("build", help="build an embedded dataset (shapes, photo-colors, coco-icons)")
    b.add_argument("name", choices=["shapes", "photo-colors", "coco-icons"])
    b.add_argument("--out", help="output folder (default: the cache, keyed by the parameters)")
    b.add_argument("--n", type=positive_int, help="number of images")
    b.add_argument("--size", type=positive_int, help="image side in pixels")
    b.add_argument("--seed", type=int, help="random seed")
    b.add_argument("--smoke", action="store_true", help="tiny smoke-run parameters")
    b.add_argument("--overwrite", action="store_true",
                   help="--out: delete a non-empty folder's contents even if it is not a previous build (lists them)")
    b.add_argument("--styles", help="coco-icons: comma-separated art styles (default: all)")
    b.add_argument("--categories", help="coco-icons: comma-separated COCO category names (default: all)")
    b.add_argument("--mode", help="coco-icons: composition, 'scene' (1-4 objects of 10-60 %% of the side; default), "
                                  "'objects' (1-2 objects of 35-80 %%) or 'single' (1 object of 50-90 %%)")
    b.set_defaults(func=_guarded(_build))

    f = sub.add_parser("fetch", help="download a paper dataset or register a local copy")
    f.add_argument("name", choices=["coco2017-val", "voc2012"])
    f.add_argument("--root", help="an existing local copy")
    f.set_defaults(func=_guarded(_fetch))

    fi = sub.add_parser("fetch-icons", help="download the pinned emoji packages of coco-icons (npm) and verify them")
    fi.add_argument("packages", nargs="*", help="package keys (default: all)")
    fi.set_defaults(func=_guarded(_fetch_icons))

    s = sub.add_parser("summary", help="write a dataset summary CSV (and an example figure)")
    s.add_argument("name", help="a dataset name or a COCO annotation file")
    s.add_argument("--out", required=True, help="CSV path")
    s.add_argument("--figure", help="example figure path (.png, .svg, ...)")
    s.add_argument("--smoke", action="store_true", help="embedded datasets: the smoke build")
    s.add_argument("--root", help="online datasets: an existing local copy")
    s.add_argument("--max-images", type=positive_int, default=None, help="at most this many images per split (>= 1)")
    s.set_defaults(func=_guarded(_summary))
    return data


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m conceptsim.data.cli data ...``) for use before the top-level CLI exists."""
    parser = argparse.ArgumentParser(prog="conceptsim")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
