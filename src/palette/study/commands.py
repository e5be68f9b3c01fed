"""The ``palette study`` subcommands: create, serve, report."""

from __future__ import annotations

import argparse


def cmd_create(args) -> int:
    from .create import StudyOptions, create_study

    options = StudyOptions(args.name, args.display_ms, args.trials_per_observer, args.catch_trials,
                           args.min_response_ms, args.seed)
    summary = create_study(args.db, args.real, args.fake, options, progress=not args.no_progress)
    print(f"study {summary['name']!r} written to {summary['db']}")
    for c in summary["conditions"]:
        unused = f"; {c['unused_reals']} real photos have no output here" if c["unused_reals"] else ""
        print(f"  {c['name']}: {c['pairs']} pairs of {c['originals']} originals ({c['source']}){unused}")
    print(f"  catch pairs: {summary['catch_pairs']}")
    print(f"serve it with: palette study serve --db {summary['db']}")
    return 0


def cmd_serve(args) -> int:
    from .server import serve

    serve(args.db, args.host, args.port)
    return 0


def cmd_report(args) -> int:
    from .report import study_report, write_report

    report = study_report(args.db, args.min_catch_accuracy, args.bootstrap, args.seed)
    paths = write_report(report, args.out)
    print(paths["table"].read_text(), end="")
    print(f"chart: {paths['chart']}; every figure: {paths['json']}")
    return 0


def add_study_parser(sub: argparse._SubParsersAction) -> None:
    """``palette study {create,serve,report}``."""
    group = sub.add_parser("study", help="a human 2AFC study (fool rate): create, serve, report",
                           description="The paper's human evaluation: observers see a real photo and a generated "
                                       "image side by side and pick the one from a camera. See docs/study.md.")
    commands = group.add_subparsers(dest="study_command", required=True)

    p = commands.add_parser("create", help="pair real and generated images into a new study database")
    p.add_argument("--real", required=True, help="folder or list file of the real photos")
    p.add_argument("--fake", required=True, action="append", metavar="[NAME=]PATH",
                   help="a condition: a palette eval output folder (each sample with its own original) or a folder "
                        "or list of images named like the real ones; repeat for several models, samplers, steps")
    p.add_argument("--name", required=True, help="the study's name (never shown to observers)")
    p.add_argument("--db", required=True, help="the SQLite file to create (never overwritten)")
    p.add_argument("--display-ms", type=int, default=3000, help="how long a pair is shown (paper: 3000 or 5000)")
    p.add_argument("--trials-per-observer", type=int, default=50, help="trials an observer answers, catch included")
    p.add_argument("--catch-trials", type=int, default=5,
                   help="of those, trials of a real photo against a heavily degraded copy (attention checks)")
    p.add_argument("--min-response-ms", type=int, default=150,
                   help="faster answers are kept but flagged and left out of the report")
    p.add_argument("--seed", type=int, default=0, help="fixes the pairs' order, sides and each observer's trials")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_create)

    p = commands.add_parser("serve", help="the observers' web page")
    p.add_argument("--db", required=True)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7861)
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("report", help="fool rate per condition with 95%% intervals, a table and a chart")
    p.add_argument("--db", required=True)
    p.add_argument("--out", default="report", help="folder for table.md, fool_rate.png, report.json")
    p.add_argument("--min-catch-accuracy", type=float, default=0.8,
                   help="observers below this share of right catch answers are excluded")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws for the intervals")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    p.set_defaults(func=cmd_report)
