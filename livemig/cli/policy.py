"""`livemig policy list|show`: the migration policies and whom they apply to."""
from __future__ import annotations

import json

import click

from livemig import api
from livemig.cli.common import State, emit, format_option, handle_errors
from livemig.views import PolicyView


def _options_text(options: dict) -> str:
    return " ".join(f"{name}={_value(value)}" for name, value in options.items()) or "(the defaults)"


def _value(value: object) -> str:
    if value is None:
        return "setting"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "''" if value == "" else str(value)


class _Row(dict):
    """A table row for `emit`, which prints views."""

    def to_dict(self) -> dict:
        return self


@click.group()
def policy() -> None:
    """Migration policies: named sets of migration options, chosen by rules."""


@policy.command("list")
@format_option
@click.pass_obj
@handle_errors
def list_(state: State, output_format: str) -> None:
    """Every policy: what it sets, its rules, the instances it applies to."""
    views = api.list_policies(settings=state.settings)
    if output_format == "json":
        click.echo(json.dumps([v.to_dict() for v in views], indent=2))
        return
    rows = [_Row({"name": v.name, "source": v.source, "sets": _options_text(v.options),
             "rules": ", ".join(f"{r['name']} ({r['criteria']})" for r in v.rules) or "-",
             "instances": len(v.instances)}) for v in views]
    emit(output_format, rows, [("NAME", "name"), ("SOURCE", "source"), ("SETS", "sets"), ("RULES", "rules"),
                               ("INSTANCES", "instances")])


@policy.command()
@click.argument("name")
@format_option
@click.pass_obj
@handle_errors
def show(state: State, name: str, output_format: str) -> None:
    """One policy: all its options (`setting`: the runner's), rules and instances."""
    view: PolicyView = api.show_policy(name, settings=state.settings)
    if output_format == "json":
        click.echo(json.dumps(view.to_dict(), indent=2))
        return
    # Plain text: rich would read brackets in a description as markup.
    click.echo(f"{'policy':<26} {view.name} ({view.source})")
    if view.description:
        click.echo(f"{'description':<26} {view.description}")
    for option, value in view.effective.items():
        mark = "" if option in view.options or option == "queue_timeout_s" else " (default)"
        if option == "queue_timeout_s":
            continue  # a request's, never a policy's
        click.echo(f"{option:<26} {_value(value)}{mark}")
    for rule in view.rules:
        click.echo(f"{'rule ' + rule['name']:<26} {rule['criteria']}")
    click.echo(f"{'instances':<26} {', '.join(view.instances) or '-'}")
