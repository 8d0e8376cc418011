"""The ``mess-edge`` command line: one click group whose subcommands are the pipeline stages.

Subcommands are loaded lazily from the module that implements them, so ``mess-edge --help`` and every
device-side command work on a machine without torch. Each command module imports only click at top level.
"""

import importlib
import signal
import sys

import click

from mess_edge.errors import MessError

# name -> "module:attribute". Host-side commands (torch) and device-side ones live in their own modules.
COMMANDS = {
    "data": "mess_edge.data.commands:data",
    "info": "mess_edge.model.commands:info",
    "train": "mess_edge.train.commands:train",
    "eval": "mess_edge.train.commands:evaluate",
    "calibrate": "mess_edge.calibrate.commands:calibrate_command",
    "export": "mess_edge.export.commands:export",
    "quantize": "mess_edge.quantize.commands:quantize",
    "build": "mess_edge.build.commands:build",
    "profile": "mess_edge.profile.commands:profile",
    "bench": "mess_edge.profile.commands:bench",
    "search": "mess_edge.search.commands:search",
    "run": "mess_edge.run.commands:run",
    "demo": "mess_edge.demo:demo_command",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is needed."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        return self._find(name)

    @staticmethod
    def _find(name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mess-edge")
def cli():
    """mess-edge: train a multi-exit segmentation network once, deploy it on every device.

    \b
    Pipeline: data -> train -> calibrate -> export [-> quantize] -> build -> profile -> search -> run
    """


class Terminated(BaseException):
    """SIGTERM (``timeout``, systemd, ``docker stop``) in a command that does not handle it itself: unwinds like
    Ctrl-C (every atomic write removes its temporary file, the previous artifact stays) and exits 143."""


def _sigterm_unwinds():
    """Turn SIGTERM into ``Terminated`` (commands such as ``run`` install their own handler on top)."""
    def handler(signum, frame):
        raise Terminated()
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (main() called from a library): leave signals alone
        pass


def main(argv=None):
    """Console entry point: user mistakes print one line and exit 2, never a traceback."""
    _sigterm_unwinds()
    try:
        rc = cli.main(args=argv, prog_name="mess-edge", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except MessError as e:
        click.echo("error: {}".format(e), err=True)
        sys.exit(2)
    except Terminated:
        click.echo("terminated (SIGTERM)", err=True)
        sys.exit(143)
    except click.exceptions.Abort as e:
        if isinstance(e.__context__, EOFError):  # click turns every EOFError into Abort: a truncated file
            click.echo("error: unexpected end of a file ({}); it is truncated: regenerate it".format(
                str(e.__context__) or "EOFError"), err=True)
            sys.exit(2)
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as e:
        # Files the user named: unreadable, no space, permission denied.
        click.echo("error: {}".format(e), err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
