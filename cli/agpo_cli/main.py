"""The ``agpo`` command line: ``crd``, ``validate``, ``render``, ``run`` and ``report``.

Exit codes: 0 success, 2 invalid input (every problem printed as one line), 1 a failure while
running. A user mistake never prints a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

Command = Callable[[argparse.Namespace], int]


def cmd_crd(args: argparse.Namespace) -> int:
    """Print the AGPOJob CRD generated from the API models."""
    from agpo_api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate AGPOJob YAML files; one line per problem."""
    from agpo_api import validate_files

    lines = validate_files(args.files)
    for line in lines:
        print(line, file=sys.stderr)
    if not lines and not args.quiet:
        for f in args.files:
            print(f"{f}: valid")
    return EXIT_INVALID if lines else EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    """Print the Kubernetes objects the operator would create for a job."""
    from agpo_api import InvalidJobError, load_jobs
    from agpo_operator.render import render_yaml

    try:
        jobs = [job for f in args.files for job in load_jobs(f)]
    except InvalidJobError as err:
        for p in err.problems:
            print(f"{err.source}: {p}", file=sys.stderr)
        return EXIT_INVALID
    sys.stdout.write(render_yaml(jobs, namespace=args.namespace))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run a job on this machine: vLLM server(s) + torchrun, with live progress."""
    from agpo_api import InvalidJobError, load_job

    try:
        job = load_job(args.file)
    except InvalidJobError as err:
        for p in err.problems:
            print(f"{err.source}: {p}", file=sys.stderr)
        return EXIT_INVALID
    try:
        from agpo_trainer.launcher import run_local, run_workdir
    except ImportError as err:
        print(
            f"agpo run needs the trainer and rollout extras ({err.name} is missing): "
            "pip install 'agpo[trainer,rollout]'",
            file=sys.stderr,
        )
        return EXIT_FAILED
    code = run_local(
        job, steps=args.steps, workdir=args.workdir, source=Path(args.file), fresh=args.fresh,
        rollout_replicas=args.rollout_replicas,
    )  # fmt: skip
    if code == EXIT_OK:
        report_after_run(run_workdir(job, Path(args.file), args.workdir))
    return code


def report_after_run(workdir: Path) -> None:
    """The end of a successful ``agpo run``: its report, or one warning line."""
    try:
        from agpo_cli.report import report_for

        path = report_for(workdir)
    except ImportError as err:
        why = f"{err.name} is missing: pip install 'agpo[report]'"
    except Exception as err:  # the run succeeded: a report it cannot make must not fail it
        why = (str(err).splitlines() or [type(err).__name__])[0]
    else:
        print(f"  report: {path}", file=sys.stderr)  # after done_summary's lines, on stderr too
        return
    print(f"agpo run: warning: no report ({why})", file=sys.stderr)


def cmd_scale(args: argparse.Namespace) -> int:
    """Change the number of vLLM servers of a running `agpo run` (kubectl scale, locally)."""
    from agpo_trainer.local.servers import replicas_file, servers_file, write_atomically

    run_dir: Path = args.run_dir
    if not servers_file(run_dir).exists():
        print(
            f"agpo scale: error: no running `agpo run` in {run_dir} (no "
            f"{servers_file(run_dir).relative_to(run_dir)}: it lists a running run's servers "
            "once they are up); pass the run's --workdir (default ./runs/NAME)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    write_atomically(replicas_file(run_dir), f"{args.rollout_replicas}\n")
    print(
        f"asked for {args.rollout_replicas} rollout server(s) in {run_dir}: `agpo run` starts "
        "or stops them, and the trainer joins the new ones at a step boundary"
    )
    return EXIT_OK


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def cmd_report(args: argparse.Namespace) -> int:
    """Write a run's report: one self-contained HTML file of plots, spec and versions."""
    from agpo_api.records import RecordsError, find_records, read_records

    try:
        records = read_records(find_records(args.run_dir))
    except RecordsError as err:
        print(f"agpo report: error: {err}", file=sys.stderr)
        return EXIT_INVALID
    try:
        from agpo_cli.report import write_report
    except ImportError as err:
        print(
            f"agpo report needs matplotlib ({err.name} is missing): pip install 'agpo[report]'",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        path = write_report(records, args.output)
    except OSError as err:
        print(f"agpo report: error: cannot write {err.filename}: {err.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(path)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agpo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("crd", help=cmd_crd.__doc__)
    p.set_defaults(func=cmd_crd)

    p = sub.add_parser("validate", help=cmd_validate.__doc__)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help=cmd_render.__doc__)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "-n", "--namespace", default=None, help="namespace (default: the job's or 'default')"
    )
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("run", help=cmd_run.__doc__)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--steps", type=int, default=None, help="override spec.training.steps")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where checkpoints, logs go (default ./runs/NAME)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start at step 0: move WORKDIR/checkpoints aside (renamed with a timestamp, not "
        "deleted) instead of resuming from the newest checkpoint",
    )
    p.add_argument(
        "--rollout-replicas",
        type=_positive,
        default=None,
        metavar="N",
        help="start N vLLM servers instead of spec.rollout.replicas (`agpo scale` changes it "
        "while the run goes on)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("scale", help=cmd_scale.__doc__)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the work directory of the run")
    p.add_argument(
        "--rollout-replicas", type=_positive, required=True, metavar="N", help="vLLM servers"
    )
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("report", help=cmd_report.__doc__)
    p.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="the work directory of `agpo run`, a checkpoint directory, or a records.jsonl",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="where to write the report (default: report.html next to the records)",
    )
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
