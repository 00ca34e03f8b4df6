"""The Typer app, and the table of commands that lets `auditor --help` start without loading them.

Importing a command's module imports what the command needs (the config's models, SQLAlchemy, Slack,
the billing clients, pandas): seconds, in all. So the root group knows each command by the table
`COMMANDS` (its modules and its one-line help) and imports a command's modules only when that command
runs: `auditor --help` and `auditor --version` import Typer and this module alone, and `auditor
breakeven` never imports the billing clients. `tests/test_cli_conventions.py` checks the table against
the commands the modules register (a command missing from it, or help that drifted, fails there).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from auditor import __version__

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_USAGE = 2

# -h as well as --help, on every command.
CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


@dataclass(frozen=True, slots=True)
class Entry:
    modules: tuple[str, ...]
    """The modules that register the command (a group's subcommands may come from several)."""
    help: str
    """Its one-line help, as `auditor --help` lists it (the command's own first docstring line)."""


_CLI = "auditor.cli."
COMMANDS: dict[str, Entry] = {
    "demo": Entry(
        (_CLI + "planning",),
        "See the whole product work without a GPU: a month of simulated traffic, the rules, the report.",
    ),
    "status": Entry(
        (_CLI + "status",),
        "GPUs and deployments as the daemon last recorded them: utilization, memory, power, tokens/s, cost.",
    ),
    "report": Entry(
        (_CLI + "report",),
        "The month for finance: cost, idle, cost per token, API equivalents, recommendations.",
    ),
    "rules": Entry((_CLI + "alerts",), "Evaluate the rules: recommendations with the dollars at stake."),
    "digest": Entry(
        (_CLI + "alerts",),
        "The weekly digest: utilization, tokens, cost, idle cost, API equivalent, recommendations.",
    ),
    "breakeven": Entry(
        (_CLI + "pricing",), "What-if: at these monthly volumes, is self-hosting cheaper than each API?"
    ),
    "replay": Entry(
        (_CLI + "planning",), "Planning: what would this API traffic cost on N GPUs, and at what utilization?"
    ),
    "prices": Entry(
        (_CLI + "prices",),
        "List GPU prices (our catalog) and API prices (genai-prices and config), with their dates.",
    ),
    "billing": Entry(
        (_CLI + "billing", _CLI + "billing_sync"),
        "Cloud bills: import FOCUS files, and what the store holds of each billing source.",
    ),
    "daemon": Entry(
        (_CLI + "host",),
        "Sample GPUs and inference servers, roll up, serve Prometheus metrics, until SIGTERM.",
    ),
    "fleet": Entry((_CLI + "fleet",), "Fleet mode: DCGM and inference servers read from Prometheus."),
    "doctor": Entry(
        (_CLI + "host",),
        "Check every configured source: NVML, inference servers, the store, Slack, billing sources.",
    ),
    "init": Entry(
        (_CLI + "install",),
        "Write a commented config (and a secrets file beside it), then print the systemd unit for this "
        "installation: save it as /etc/systemd/system/auditor.service.",
    ),
    "config": Entry((_CLI + "install",), "Check the configuration."),
    "version": Entry((_CLI + "pricing",), "Print the version."),
}


class LazyGroup(TyperGroup):
    """The root group: lists the commands from `COMMANDS`, imports one only when it is used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing = False
        self.loaded: set[str] = set()
        """The commands whose modules were imported (a group such as `config` exists before)."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.loaded or cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        entry = COMMANDS[cmd_name]
        if self._listing:  # the root's help: the name and one line are all it shows
            return TyperCommand(cmd_name, help=entry.help, short_help=entry.help)
        for module in entry.modules:
            importlib.import_module(module)
        loaded = typer.main.get_command(app)
        assert isinstance(loaded, TyperGroup)  # noqa: S101  (an app with commands is a group)
        found = loaded.commands.get(cmd_name)
        if found is None:
            return None
        _clean_metavars(found)
        self.commands[cmd_name] = found
        self.loaded.add(cmd_name)
        return found

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except typer.TyperException as exc:  # a usage error: suggest among every command, loaded or not
            message = getattr(exc, "message", "")
            close = get_close_matches(args[0], list(COMMANDS)) if args else []
            if close and "Did you mean" not in message:
                exc.message = f"{message.rstrip('.')}. Did you mean {', '.join(map(repr, close))}?"
            raise

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="auditor",
    cls=LazyGroup,
    help="GPU utilization auditor: is self-hosting your LLMs still paying for itself?",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT,
)
config_app = typer.Typer(help="Check the configuration.", no_args_is_help=True, context_settings=CONTEXT)
app.add_typer(config_app, name="config")


def _print_version(value: bool) -> None:
    if value:
        print(f"gpu-auditor {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _global_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="On an error, print its traceback too (redacted). Works anywhere on the command line, "
            "or set AUDITOR_DEBUG=1.",
        ),
    ] = False,
) -> None:
    """GPU utilization auditor: is self-hosting your LLMs still paying for itself?

    Colours follow NO_COLOR; shell completion: `auditor --install-completion`."""


# What help shows after an option that takes a value, by the value's type (never `<bool>` after a flag).
_PLACEHOLDERS = {"int": "N", "float": "NUMBER", "Path": "PATH", "str": "TEXT"}


def command(*, everything: bool = True) -> TyperGroup:
    """The click command of the app, with help that shows no type metavars.

    everything=False (the console script): commands are imported when used. Typer prints `<bool>`
    after every flag and `<str>` after values; flags get nothing, and an option that takes a value
    gets a word (TEXT, N, NUMBER, PATH) unless it names its own metavar."""
    if everything:
        for entry in COMMANDS.values():
            for module in entry.modules:
                importlib.import_module(module)
    group = typer.main.get_command(app)
    assert isinstance(group, LazyGroup)  # noqa: S101  (the app's class)
    _clean_metavars(group)
    if everything:
        group.loaded.update(COMMANDS)
    return group


def _clean_metavars(cmd: Any) -> None:
    if isinstance(cmd, TyperGroup):
        for sub in cmd.commands.values():
            _clean_metavars(sub)
    # The help option is made (once, then kept) from a context: make it now to clean it too.
    for param in [*cmd.params, cmd.get_help_option(typer.Context(cmd, **CONTEXT))]:
        _clean(param)


def _clean(param: object) -> None:
    if isinstance(param, TyperOption) and param.metavar is None:
        if param.is_flag:
            param.metavar = ""
        else:
            bare = param.display_type(None).strip("<>")  # type: ignore[arg-type]
            param.metavar = _PLACEHOLDERS.get(bare.removeprefix("list[").removesuffix("]"), bare.upper())
    elif isinstance(param, TyperArgument) and param.metavar is None:
        param.metavar = param.name.upper() if param.name else None
