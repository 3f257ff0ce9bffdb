"""`python -m flowcore --help` describes every command, and each command's --help shows the defaults."""
import importlib
import subprocess
import sys

import pytest

from flowcore import cli, models


def test_top_level_help_describes_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (module, func, desc) in cli.COMMANDS.items():
        assert desc and f"  {name}" in out and desc in out
        assert callable(getattr(importlib.import_module(module), func))  # every entry resolves


def test_unknown_command_lists_the_commands(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "generate" in capsys.readouterr().err


@pytest.mark.parametrize("cmd,option,default", [("train", "--lora-r", "8"), ("generate", "--chunk-size", "160"),
                                                ("reproduce", "--stages", "all"),
                                                ("model-path", "NAME", models.DEFAULT_MODEL)])  # a positional
def test_command_help_shows_defaults(cmd, option, default):
    out = subprocess.run([sys.executable, "-m", "flowcore", cmd, "--help"], capture_output=True, text=True,
                         check=True).stdout
    block = out[out.index(f"  {option}"):]
    block = block[:block.index("\n  -", 1)] if "\n  -" in block[1:] else block
    assert f"(default: {default})" in " ".join(block.split())
    assert out.startswith(f"usage: python -m flowcore {cmd} ")  # --help is never taken for a value
