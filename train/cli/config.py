"""`energy-attn config reference` (every key, README's table) and `energy-attn config show`
(a resolved config as YAML)."""
from __future__ import annotations

from train.cli.args import CLIError, command, resolve_config


def add_parser(sub):
    p = command(sub, "config", help="config tools: the key reference, a resolved config",
                description="Print every config key (type, default, meaning), or a resolved config.",
                example="energy-attn config reference > docs/config.md")
    cfg = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    r = command(cfg, "reference", help="markdown table of every config key (README's reference)",
                description="The table in README.md's configuration reference, from the dataclasses.",
                example="energy-attn config reference --update README.md")
    r.add_argument("--update", metavar="FILE", default=None,
                   help="rewrite the table between FILE's <!-- config-reference --> markers instead")
    r.set_defaults(handler=_config_reference, prog=r.prog)
    s = command(cfg, "show", help="print a config with overrides applied, as YAML",
                description="Load CONFIG, apply KEY=VALUE overrides, validate, print the YAML.",
                example="energy-attn config show configs/default.yaml model.attention.energy=sigmoid")
    s.add_argument("config", nargs="?", default=None)
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    s.set_defaults(handler=_config_show, prog=s.prog)


REFERENCE_MARKERS = ("<!-- config-reference -->\n", "<!-- /config-reference -->")


def _config_reference(args):
    from train.config import config_reference
    if args.update is None:
        print(config_reference(), end="")
        return 0
    try:
        text = open(args.update, encoding="utf-8").read()
    except OSError as e:
        raise CLIError(f"--update: cannot read {args.update!r} ({e.strerror})") from None
    start, end = (text.find(m) for m in REFERENCE_MARKERS)
    if start < 0 or end < start:
        raise CLIError(f"--update: {args.update} has no '{REFERENCE_MARKERS[0].strip()}' ... "
                       f"'{REFERENCE_MARKERS[1]}' block")
    start += len(REFERENCE_MARKERS[0])
    with open(args.update, "w", encoding="utf-8") as f:
        f.write(text[:start] + config_reference() + text[end:])
    print(f"updated the config reference in {args.update}")
    return 0


def _config_show(args):
    import yaml
    from train.config import to_dict
    cfg = resolve_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0
