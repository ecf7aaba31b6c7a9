"""The ``dnd`` command line, one module per command group: ``run`` (describe, run, status, layers, report),
``compare``, ``evaluate`` (its subcommands), ``clip_dissect``. Commands parse, call the library and print the
tables of ``tables``; every one shows a :class:`~dnd.errors.DnDError` as one message (``console.user_errors``)."""

from __future__ import annotations

import typer

from dnd.cli import clip_dissect, compare, evaluate, run
from dnd.cli.console import user_errors

app = typer.Typer(
    help="Describe-and-Dissect: plain-language descriptions of what a vision network's neurons respond to.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
evaluate_app = typer.Typer(help="Score label sets quantitatively.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")

app.command("describe")(user_errors()(run.describe))
app.command("report")(user_errors()(run.report_command))
app.command("run")(user_errors()(run.run_stage))
app.command("status")(user_errors()(run.status))
app.command("layers")(user_errors()(run.layers))
app.command("compare")(user_errors()(compare.compare))
app.command("clip-dissect")(user_errors()(clip_dissect.clip_dissect))
evaluate_app.command("final-layer")(user_errors()(evaluate.final_layer))
evaluate_app.command("cosy")(user_errors()(evaluate.cosy))
evaluate_app.command("classifiers")(user_errors()(evaluate.classifiers))
evaluate_app.command("simulation")(user_errors()(evaluate.simulation))
evaluate_app.command("ablation")(user_errors()(evaluate.ablation))
