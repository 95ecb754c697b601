"""Every command's --help, rendered as a user renders it (the installed `lipref` in a fresh
process; the commands enumerated from the click group, so a new command is covered when it
is added), exits 0 and names every option and argument; and what the help texts say is true
of the commands: sound mode only where there is a --mode, shuffling only where training
shuffles, --eps required wherever it is the radius asked about, optional arguments in
brackets, every architecture and ONNX op the importers take named, and the README's Commands
block naming options that exist."""
import re
import subprocess
from pathlib import Path

import click
import pytest

from cli import main
from lipref.check import CheckConfig
from lipref.models import ARCHITECTURES, GENERIC_STACK
from lipref.onnx_import.chain import Chain
from test_cli_json import lipref_command

ROOT = Path(__file__).resolve().parents[1]


def command_paths(group=main, prefix=()):
    """Every command and group under `group`, as tuples of names (the top-level group is ())."""
    yield prefix
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from command_paths(command, prefix + (name,))
        else:
            yield prefix + (name,)


def command_at(path):
    command = main
    for name in path:
        command = command.commands[name]
    return command


PATHS = list(command_paths())


@pytest.fixture(scope="module")
def helps():
    """{command path: its --help text}, each rendered by the installed CLI in its own process."""
    rendered = {}
    for path in PATHS:
        result = subprocess.run(lipref_command() + [*path, "--help"], capture_output=True, text=True, cwd=ROOT,
                                timeout=120)
        assert result.returncode == 0 and not result.stderr, (path, result.stderr)
        rendered[path] = result.stdout
    return rendered


def flat(text):
    """Help text with click's line wrapping undone (words split at a hyphen rejoined)."""
    return " ".join(re.sub(r"-\n\s+", "-", text).split())


def test_the_commands_are_the_ones_expected():
    """A guard that enumeration finds what the CLI has (a new command is then checked below)."""
    assert {"train", "certify", "bound", "attack", "check", "info", "import-torch", "import-onnx"} <= set(main.commands)
    assert ("data", "download") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "lipref")
def test_help_renders_and_names_every_option_and_argument(helps, path):
    text, command = helps[path], command_at(path)
    assert text.startswith(f"Usage: lipref {' '.join(path)}".rstrip()) and "Traceback" not in text
    for param in command.params:
        if isinstance(param, click.Argument):
            assert param.make_metavar(click.Context(command)) in text.splitlines()[0], (path, param.name)
        else:
            assert param.help, (path, param.opts)  # every option says what it does
            for flag in param.opts + param.secondary_opts:
                assert re.search(rf"(^|[\s/,]){re.escape(flag)}\b", text, flags=re.M), (path, flag)
    if isinstance(command, click.Group):
        assert all(name in text for name in command.commands)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "lipref")
def test_optional_arguments_are_shown_in_brackets(helps, path):
    usage = helps[path].splitlines()[0]
    for param in command_at(path).params:
        if isinstance(param, click.Argument) and not param.required:
            name = param.metavar or param.name.upper()
            assert f"[{name.strip('[]')}]" in usage, (path, usage)


def test_sound_mode_and_lanczos_only_where_there_is_a_mode(helps):
    """`attack --seed` described sound mode's OS entropy and Lanczos starts; attack has no
    --mode (and its --dtype said 'auto: float64 in sound mode')."""
    for path, text in helps.items():
        options = {flag for p in command_at(path).params for flag in getattr(p, "opts", [])}
        if "--mode" not in options and path:
            assert not re.search(r"sound mode|Lanczos", flat(text)), path


def test_shuffling_only_where_training_shuffles(helps):
    assert sorted(path for path, text in helps.items() if "shuffl" in text) == [("demo",), ("train",)]  # both train


def test_eps_is_required_wherever_it_is_the_radius_asked_about():
    """certify, bound, attack and check take the radius the user asks about: none defaults it
    (check defaulted to 0.1). train's --eps is the training radius, with its schedule."""
    for path in PATHS:
        params = {p.opts[0]: p for p in command_at(path).params if isinstance(p, click.Option)}
        if "--eps" in params and path != ("train",):
            assert params["--eps"].required, path


def test_check_shows_the_limit_it_uses():
    """check compared 8 examples when --limit was not given, and its help said nothing."""
    limit = next(p for p in command_at(("check",)).params if p.name == "limit")
    assert limit.default == CheckConfig().limit == 8 and limit.show_default


def test_importers_name_every_architecture_and_op_they_take(helps):
    arch_help = "".join(helps[("import-torch",)].split())  # click may wrap a long word anywhere
    for name in [*ARCHITECTURES, "mlp-W", "linear", "auto", GENERIC_STACK]:
        assert name in arch_help, name
    onnx_help = flat(helps[("import-onnx",)])
    ops = [name[3:] for name in dir(Chain) if name.startswith("on_") and name[3].isupper()]  # on_<OpType>
    assert ops and not [op for op in ops if op not in onnx_help]


def readme_commands():
    """{command: its line} of the README's Commands block."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Commands"):]
    block = block[:block.index("\n\n", block.index("    lipref"))]
    return {line.split()[1]: line for line in block.splitlines() if line.startswith("    lipref ")}


def test_the_readme_commands_block_names_options_that_exist():
    lines = readme_commands()
    assert set(lines) >= set(main.commands) - {"demo"}  # demo: the README's first command
    for name, line in lines.items():
        command = main.commands[name]
        options = {flag for p in command.params for flag in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
        if isinstance(command, click.Group):
            options = {flag for sub in command.commands.values() for p in sub.params for flag in p.opts}
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line))
        assert named <= options, (name, named - options)
        required = {p.opts[0] for p in command.params if isinstance(p, click.Option) and p.required}
        assert required <= named, (name, required - named)
