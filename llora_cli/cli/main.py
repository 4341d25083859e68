"""The root ``llora`` app: wires the noun groups and top-level verbs, maps errors to exit codes."""

from __future__ import annotations

import os

import typer
from typer.core import TyperGroup

from llora_cli.cli import (
    adapters,
    artifacts,
    bases,
    classify,
    compress,
    data,
    db,
    demo,
    doctor,
    evalcmd,
    experiment,
    kinds,
    merge,
    modifiers,
    plan,
    router,
    run,
    runs,
    train,
    transfer,
)
from llora_cli.cli.options import HomeOpt, debug, report_error
from llora_store.errors import LloraError


class LloraGroup(TyperGroup):
    """Turns LloraError into a message and an exit code, in this one place."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LloraError as exc:
            if debug():
                raise
            raise typer.Exit(report_error(exc)) from None
        except KeyboardInterrupt:
            if debug():
                raise
            report_error(LloraError("interrupted; nothing half-written was published"))
            raise typer.Exit(130) from None
        except BrokenPipeError:  # the reader went away (`llora ... | head`): no message
            import os
            import sys

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's documented recipe (signal module)
            raise typer.Exit(1) from None  # as click does for a broken pipe outside a command
        except OSError as exc:  # disk full, permissions, a vanished file: the system's words, no traceback
            if debug():
                raise
            raise typer.Exit(report_error(LloraError(
                f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}; nothing half-written was published",
                hint="free space or fix the permissions, then run the command again"))) from None
        except Exception as exc:  # a bug: one line, the traceback on request
            if debug() or type(exc).__module__.split(".")[0] in ("click", "typer"):
                raise  # usage errors and exits of the CLI framework keep their own handling
            raise typer.Exit(report_error(LloraError(
                f"unexpected error: {type(exc).__name__}: {exc}; nothing half-written was published",
                hint="this is a bug in llora: rerun with LLORA_DEBUG=1 to see the traceback and report it"))) from None


app = typer.Typer(
    cls=LloraGroup,
    name="llora",
    help="Catalog, guard and run LoRA fine-tunes of open LLMs.\n\nExample: llora demo",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(home: HomeOpt = None) -> None:
    if home:
        os.environ["LLORA_HOME"] = home


app.add_typer(bases.app, name="bases")
app.add_typer(adapters.app, name="adapters")
app.add_typer(modifiers.app, name="modifiers")
for _kind in ("merged", "compressed", "router", "dataset", "scenario-set", "layer-adapters"):
    app.add_typer(kinds.kind_app(_kind), name=kinds.GROUPS[_kind])
app.add_typer(router.app, name="router")
app.add_typer(data.app, name="data")
app.add_typer(runs.app, name="runs")
app.add_typer(db.app, name="db")
app.command("train")(train.train)
app.command("eval")(evalcmd.eval_)
app.command("classify")(classify.classify)
app.command("experiment")(experiment.experiment)
app.command("merge")(merge.merge)
app.command("compress")(compress.compress)
app.command("run")(run.run)
app.command("serve")(run.serve)
app.add_typer(run.logs_app, name="logs")
app.command("plan")(plan.plan)
app.command("export")(transfer.export)
app.command("import")(transfer.import_)
artifacts.register(app)
app.command("doctor")(doctor.doctor)
app.command("demo")(demo.demo)

