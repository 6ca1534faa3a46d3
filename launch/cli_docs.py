"""A self-documenting CLI: defaults shown in every --help, examples at the end of each
subcommand's help, a --verbose switch on each, and `neurograph config show`."""
from __future__ import annotations

import argparse

EXAMPLES = {
    "train": """\
  neurograph train --config configs/demo.yaml trainer.num_processes=2 deepspeed.zero_stage=3
  neurograph train --config configs/demo.yaml --resume          # continue trainer.run_dir's latest checkpoint
  neurograph train --config configs/demo.yaml trainer.run_dir=runs/ft --init-from runs/demo/run:400""",
    "model summary": """\
  neurograph model summary --config configs/inl_1.1b.yaml
  neurograph model summary --config runs/demo/run/config.yaml --json""",
    "generate": """\
  neurograph generate --run runs/demo/run --prompt "ROMEO:" --max-new-tokens 300 > sample.txt
  neurograph generate --run runs/demo/run --checkpoint 400 --prompt "JULIET:" --greedy""",
    "convergence": """\
  neurograph convergence --run runs/inl --prompt "To be, or not to be" --out conv.png""",
    "inspect": """\
  neurograph inspect --run runs/inn_text8/run --out inspection/inn
  neurograph inspect --run runs/inl --checkpoint 400 --sequences 32 --out inspection/inl""",
    "demo": """\
  neurograph demo
  neurograph demo --run-root /tmp/demo trainer.max_steps=50""",
    "export hf": """\
  neurograph export hf --run runs/demo/run --out exports/demo
  neurograph export hf --run runs/demo/run --checkpoint 400 --out exports/demo-400 --dtype bf16""",
    "config show": """\
  neurograph config show                                        # every key, its default and meaning
  neurograph config show --config configs/demo.yaml trainer.lr=1e-3 --json""",
    "doctor": """\
  neurograph doctor
  neurograph doctor --json > environment.json
  ray job submit -- neurograph doctor --ray auto                # every node of the cluster against the driver""",
    "eval": """\
  neurograph eval --run runs/demo/run
  neurograph eval --run runs/demo/run --data data/other --split train --batches 20""",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option's help (unless unset or off); examples printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _subcommands(parser: argparse.ArgumentParser, path: str = ""):
    """(command path, parser) of every subcommand, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{path} {name}".strip()
                yield full, sub
                yield from _subcommands(sub, full)


def is_leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def document(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every parser of the tree the help formatter; each command its examples and --verbose."""
    parser.formatter_class = HelpFormatter
    for path, sub in _subcommands(parser):
        sub.formatter_class = HelpFormatter
        if not is_leaf(sub):
            continue
        if path in EXAMPLES and not sub.epilog:
            sub.epilog = "examples:\n" + EXAMPLES[path]
        if "--verbose" not in sub._option_string_actions:
            sub.add_argument("--verbose", action="store_true",
                             help="log from every rank, with the dependencies' warnings and start-up messages")
    return parser
