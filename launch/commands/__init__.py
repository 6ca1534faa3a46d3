"""One module per `neurograph` command, each with `add_command(subparsers)` and the function it runs."""
from . import (config, convergence, data, demo, doctor, evaluate, export, generate, inspect, model, plan, report,
               sweep, train)

COMMANDS = (train, model, data, generate, convergence, export, demo, plan, doctor, config, evaluate, sweep,
            report, inspect)  # help order
