"""One module per `adactrl` subcommand: `add_parser(sub)` registers it; heavy imports wait for `run`."""
