"""Moved to :mod:`jnet2net.cli.format`; this name keeps old imports working."""

from jnet2net.cli.format import (
    QUIET_LOGGERS,
    HelpFormatter,
    Parser,
    flag_names,
    in_flag_terms,
    quiet_third_party_logs,
    run_summary,
    subparser,
)

__all__ = [
    "QUIET_LOGGERS",
    "HelpFormatter",
    "Parser",
    "flag_names",
    "in_flag_terms",
    "quiet_third_party_logs",
    "run_summary",
    "subparser",
]
