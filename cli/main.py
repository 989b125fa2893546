"""The ``privkit`` command line (Typer). A thin layer: every command calls the library."""

from __future__ import annotations

import typer

from privkit.cli import (commands_anonymize, commands_attack, commands_audit, commands_data, commands_demo,
                         commands_i2i, commands_suppress, commands_train, commands_unlearn)

app = typer.Typer(
    name="privkit",
    help="Privacy and machine-unlearning toolkit: suppress attributes, anonymize biometrics, unlearn, audit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(commands_data.app, name="datasets", help="List, describe and generate datasets.")
audit_app = typer.Typer(help="Audits: fresh attackers, residual knowledge.", no_args_is_help=True)
attack_app = typer.Typer(help="Privacy attacks.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(attack_app, name="attack")

commands_train.register(app, audit_app)

for _module in (commands_suppress, commands_unlearn, commands_anonymize, commands_audit, commands_attack,
                commands_i2i, commands_demo):
    _module.register(app, audit_app, attack_app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
