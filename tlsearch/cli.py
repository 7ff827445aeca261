"""The ``tlsearch`` command line: each command parses options and calls one core function.

Domain errors (:class:`tlsearch.errors.TLSearchError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import click

from tlsearch.errors import TLSearchError


class InputError(click.ClickException):
    """A TLSearchError shown as one line, exit code 2 (bad input: nothing was written)."""

    exit_code = 2


def domain_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TLSearchError as exc:
            raise InputError(str(exc)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tlsearch")
def cli() -> None:
    """Measure what transfer learning saves: search freeze depth, learning rates, data fraction and
    pretrained-vs-scratch with Ray Tune (Optuna TPE + ASHA), each trial a Ray Train run of a timm model."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


SPACE_HELP = "a value, a list 'a,b,c' (choices) or a range 'low:high'"


RUN_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False),
                 help="YAML or TOML config; flags override it."),
    click.option("--dataset", help="digits, digits-split, fashion-mnist, fashion-mnist-split, "
                                   "an ImageFolder or Parquet path."),
    click.option("--data-dir",
                 help="Folder with Fashion-MNIST IDX files (default: Debian's dataset-fashion-mnist)."),
    click.option("--model", help="Any timm model name, or several 'a,b,c' to search over (default resnet10t)."),
    click.option("--weights", help="Pretrained weights (safetensors or state dict): FILE, or MODEL=FILE,... "
                                   "with several models; a model without a file: timm hub or cache."),
    click.option("--image-size", type=int,
                 help="Square input size (default: the weights' sidecar or the model's config)."),
    click.option("--trials", type=int, help="Number of trials (default 12)."),
    click.option("--max-epochs", type=int, help="Epochs a trial runs at most; ASHA's max_t (default 8)."),
    click.option("--grace-period", type=int, help="ASHA grace period in epochs (default 1)."),
    click.option("--reduction-factor", type=int, help="ASHA reduction factor (default 2)."),
    click.option("--name", help="Search name: results go to RESULTS_DIR/NAME/ (default search-<time>)."),
    click.option("--results-dir", type=click.Path(file_okay=False),
                 help="Where results go (default results/)."),
    click.option("--seed", type=int, help="Seed for TPE, the splits and the trials (default 0)."),
    click.option("--batch-size", type=int, help="Training batch size per worker (default 64)."),
    click.option("--val-size", type=int, help="Validation images held out of the target set (default 1000)."),
    click.option("--test-size", type=float, help="Share of the target images held out as the test set when the "
                                                 "dataset names no test split (default 0.2)."),
    click.option("--num-workers", type=int, help="Ray Train workers per trial (default 1)."),
    click.option("--cpus-per-worker", type=float, help="CPUs each worker holds (default 1)."),
    click.option("--gpu/--no-gpu", "use_gpu", default=None, help="Use GPUs (default: when Ray has them)."),
    click.option("--gpus-per-worker", type=float,
                 help="GPUs each Train worker holds, with --gpu: a share of one (0.5: two trials share a GPU) or a "
                      "whole number (default 1)."),
    click.option("--model-resources",
                 help="Per-model CPUs and GPUs per worker, MODEL=CPUS:GPUS,... (e.g. vit_small_patch16_224=2:0.5; "
                      "MODEL=CPUS or MODEL=:GPUS for one of them); other models take the two options above."),
    click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
                 help="Training precision: auto is bf16 mixed precision on GPUs that have it, fp16 on other GPUs, "
                      "fp32 on CPUs; bf16/fp16 need --gpu (default auto)."),
    click.option("--max-concurrent", type=int,
                 help="Cap on trials at once (default: what the resources fit)."),
    click.option("--asha-groups", type=click.Choice(["init", "init,data_fraction"]),
                 help="ASHA ranks a trial only among trials of its own arm, or arm and data fraction (default init)."),
    click.option("--feature-cache/--no-feature-cache", default=None,
                 help="Linear probes train on frozen features computed once per data subset (default: on)."),
    click.option("--data-loading", type=click.Choice(["auto", "memory", "stream"]),
                 help="memory: decode the target once and share it through the object store; stream: Ray Data "
                      "reads, decodes and transforms each worker's shard as it trains (Parquet or ImageFolder, "
                      "any size; linear probes still train on cached frozen features); auto: memory when the "
                      "decoded images fit (default auto)."),
    click.option("--augment", type=click.Choice(["none", "light", "strong"]),
                 help="Training-time augmentation from timm's transform factory: light = random resized crop "
                      "(scale 0.35-1) + horizontal flip, strong = crop (0.08-1) + flip + RandAugment; validation "
                      "and test never; cached linear-probe features stay un-augmented (default none)."),
    click.option("--trial-timeout", "trial_timeout_s", type=float,
                 help="Seconds a trial may run before it is ended and recorded as timed out (default: none)."),
    click.option("--freeze-depth",
                 help=f"Frozen leading parameter groups of a single model: {SPACE_HELP} (default: all depths)."),
    click.option("--freeze-share",
                 help=f"Frozen share of each model's parameter groups in [0, 1] (0 = train all, 1 = linear probe), "
                      f"mapped to a depth per model: {SPACE_HELP} (default 0:1 with several models)."),
    click.option("--head-lr", help=f"Head learning rate: {SPACE_HELP} (ranges are log-uniform)."),
    click.option("--backbone-lr", help=f"Backbone learning rate: {SPACE_HELP} (ranges are log-uniform)."),
    click.option("--data-fraction", help=f"Share of the target training set: {SPACE_HELP}."),
    click.option("--init", help="pretrained, scratch or 'pretrained,scratch' (default both)."),
    click.option("-v", "--verbose", count=True, help="More of Ray's output (-vv: worker logs too)."),
]


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The search options shared by ``run`` and ``submit`` (which forwards them to ``tlsearch run``)."""
    for option in reversed(RUN_OPTIONS):
        fn = option(fn)
    return fn


@cli.command()
@run_options
@click.option("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray on 127.0.0.1).")
@click.option("--restart", is_flag=True, help="Discard an existing search of this --name and start over.")
@domain_errors
def run(config_file: str | None, verbose: int, restart: bool, **options: Any) -> None:
    """Run a search, or resume the one of the same --name, and write its Parquet tables under
    RESULTS_DIR/NAME/ (a path, s3:// or gs://)."""
    from tlsearch import report
    from tlsearch.config import build_config
    from tlsearch.search import run_search

    outcome = run_search(build_config(config_file, **options), echo=click.echo, verbose=verbose, restart=restart)
    click.echo(f"\ntlsearch: search {outcome.name} finished in {outcome.wall_s:.0f} s; tables in {outcome.folder}")
    for line in report.summary(outcome.tables["trials"]):
        click.echo(line)
    if outcome.best_weights:
        click.echo(f"best model: {outcome.best_weights} (+ .json sidecar; usable as --weights)")


@cli.command()
@click.option("--dataset", default="fashion-mnist-split", show_default=True,
              help="Dataset whose source half (classes 0-4 of a *-split built-in) to train on.")
@click.option("--model", default="resnet10t", show_default=True, help="timm model name.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .safetensors file.")
@click.option("--epochs", default=1, show_default=True, type=int)
@click.option("--image-size", default=32, show_default=True, type=int)
@click.option("--data-dir", help="Folder with Fashion-MNIST IDX files.")
@click.option("--lr", default=3e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Train again even if OUT matches the request.")
@domain_errors
def pretrain(dataset: str, model: str, out: str, **options: Any) -> None:
    """Train a source model and write safetensors plus a JSON sidecar."""
    from tlsearch.source import pretrain as run_pretrain

    run_pretrain(dataset, model, out, echo=click.echo, **options)


@cli.command()
@click.argument("results_dir")
@click.argument("sql", required=False)
@click.option("--table", "table_name", type=click.Choice(["trials", "epochs", "experiments", "confirm"]),
              default="trials", show_default=True, help="Which table the shorthands read.")
@click.option("--where", help="Filter, e.g. \"init = 'pretrained' and data_fraction <= 0.1\".")
@click.option("--columns", help="Columns, comma separated, or 'all' (default: the ten or so that matter).")
@click.option("--sort", "sort_keys", multiple=True, help="col[:asc|desc]; repeat it or comma separate.")
@click.option("--limit", type=click.IntRange(min=0), help="At most N rows.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="Output format (parquet needs --out).")
@click.option("--out", help="Write to FILE (a path or s3:// / gs:// URI) instead of the terminal.")
@domain_errors
def query(
    results_dir: str, sql: str | None, table_name: str, where: str | None, columns: str | None,
    sort_keys: tuple[str, ...], limit: int | None, fmt: str, out: str | None,
) -> None:
    """SQL over the tables under RESULTS_DIR (a path or URI), run by DuckDB on the Arrow datasets.

    The tables are experiments, trials, epochs and confirm, e.g.
    tlsearch query results "SELECT init, data_fraction, max(best_val_acc) FROM trials GROUP BY ALL".
    Without SQL, --table/--where/--columns/--sort/--limit build the SELECT.
    """
    from tlsearch import query as query_mod

    if sql is not None and (where or columns or sort_keys or limit is not None):
        raise InputError("give either SQL or the shorthands --where/--columns/--sort/--limit, not both")
    statement = sql if sql is not None else query_mod.build_sql(table_name, where, columns, sort_keys, limit)
    data = query_mod.run_sql(results_dir, statement)
    text = query_mod.write_output(data, fmt, out)
    if text is not None:
        click.echo(text, nl=False)
    else:
        click.echo(f"tlsearch: wrote {data.num_rows} row(s) to {out}", err=True)


@cli.command()
@click.argument("results_dir", type=click.Path(file_okay=False))
@click.option("--experiment", help="Experiment (search) name (default: the newest by created_at).")
@click.option("--target-acc", type=float,
              help="Target val_acc in (0, 1] for every data fraction (default, per fraction: scratch's mean best "
                   "val_acc over its confirmation runs; from the search alone, scratch's best).")
@domain_errors
def report(results_dir: str, experiment: str | None, target_acc: float | None) -> None:
    """Write report.md, plots and summary.json under RESULTS_DIR/<experiment>/report/; print the headline.

    RESULTS_DIR may be a path or a URI (s3://, gs://). With `tlsearch confirm` results, every data fraction gets
    test accuracy and compute-to-target with 95% intervals and a verdict; without, the numbers are labelled
    "from the search, unconfirmed".
    """
    from tlsearch import report as report_mod

    outcome = report_mod.write_report(results_dir, experiment, target_acc)
    for line in outcome.lines:
        click.echo(line)


@cli.command()
@click.argument("results_dir", type=click.Path(file_okay=False))
@click.option("--grace", "graces", multiple=True, required=True, help="Grace period(s) in epochs, e.g. 1,2.")
@click.option("--reduction", "reductions", multiple=True, required=True, help="Reduction factor(s): 2,3.")
@click.option("--experiment", help="Experiment (search) name (default: the newest by created_at).")
@domain_errors
def replay(
    results_dir: str, graces: tuple[str, ...], reductions: tuple[str, ...], experiment: str | None
) -> None:
    """Re-run ASHA's decisions offline on the recorded curves: compute and best accuracy per setting."""
    from tlsearch import replay as replay_mod

    grace_values = replay_mod.parse_ints(graces, "--grace")
    reduction_values = replay_mod.parse_ints(reductions, "--reduction")
    info, curves = replay_mod.load_curves(results_dir, experiment)
    outcomes = replay_mod.replay_settings(curves, grace_values, reduction_values, int(info["max_epochs"]))
    for line in replay_mod.format_report(info, curves, outcomes):
        click.echo(line)


@cli.command()
@click.argument("results_dir")
@click.option("--experiment", help="Experiment (search) name (default: the newest by created_at).")
@click.option("--repeats", type=int, default=3, show_default=True,
              help="Runs per configuration, each with its own seed.")
@click.option("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray on 127.0.0.1).")
@click.option("--restart", is_flag=True, help="Discard an earlier confirmation of this experiment.")
@click.option("-v", "--verbose", count=True, help="More of Ray's output.")
@domain_errors
def confirm(results_dir: str, experiment: str | None, repeats: int, address: str | None, restart: bool,
            verbose: int) -> None:
    """Retrain the best configuration of every (init, data_fraction) --repeats times to max_epochs, without
    early stopping, scoring validation and test every epoch; writes confirm.parquet (resumable like run)."""
    from tlsearch.confirm import confirm as run_confirm

    outcome = run_confirm(results_dir, experiment, repeats, address=address, restart=restart, echo=click.echo,
                          verbose=verbose)
    click.echo(f"tlsearch: {outcome.runs} confirmation run(s) of {outcome.experiment} in {outcome.wall_s:.0f} s; "
               f"{outcome.table.num_rows} rows in {outcome.folder}/confirm.parquet; "
               f"`tlsearch report {results_dir}` turns them into intervals and verdicts")


ADDRESS_HELP = "Ray dashboard URL, http(s)://HOST:PORT (default: RAY_API_SERVER_ADDRESS)."
INSECURE_HELP = "Allow plain http:// to a non-loopback host without a token (jobs run code: avoid)."


def _warn(message: str) -> None:
    click.echo(message, err=True)


@cli.command()
@run_options
@click.option("--address", envvar="RAY_API_SERVER_ADDRESS", help=ADDRESS_HELP)
@click.option("--storage-path", envvar="TLSEARCH_STORAGE_PATH",
              help="Where results and checkpoints go: s3://, gs:// or an absolute path "
                   "(default: --results-dir).")
@click.option("--shared-storage", is_flag=True,
              help="The local --storage-path is on storage every node mounts (NFS/EFS/Filestore).")
@click.option("--working-dir", type=click.Path(exists=True, file_okay=False), default=".", show_default=True,
              help="Folder shipped with the job (config and weights files inside it travel along).")
@click.option("--install/--no-install", default=True, show_default=True,
              help="Have Ray pip-install tlsearch's requirements for the job "
                   "(off: the cluster image has them).")
@click.option("--insecure", is_flag=True, help=INSECURE_HELP)
@domain_errors
def submit(
    address: str | None, storage_path: str | None, shared_storage: bool, working_dir: str, install: bool,
    insecure: bool, **options: Any,
) -> None:
    """Submit a search to a Ray cluster as a job running `tlsearch run` there; print the job id.

    The search's configuration is built here as `tlsearch run` would build it, then shipped as a file.
    """
    from tlsearch import cluster
    from tlsearch.config import build_config

    conn = cluster.connect(address, insecure)
    if cluster.sends_token_in_clear(conn.address, conn.token):
        _warn(f"tlsearch: warning: the token goes to {conn.address} unencrypted; "
              "prefer https or an SSH tunnel")
    verbose = int(options.pop("verbose") or 0)
    config = build_config(options.pop("config_file", None), **options)
    request = cluster.plan_submission(
        conn, config, storage_path=storage_path, shared_storage=shared_storage, working_dir=working_dir,
        install=install, verbose=verbose, note=_warn,
    )
    job_id = cluster.submit(conn, request)
    click.echo(job_id)
    _warn(f"tlsearch: watch it with: tlsearch jobs status {job_id} --address {conn.address}")


@cli.group()
def jobs() -> None:
    """Watch, read or stop searches submitted with `tlsearch submit`."""


def _job_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = domain_errors(fn)
    fn = click.option("--insecure", is_flag=True, help=INSECURE_HELP)(fn)
    fn = click.option("--address", envvar="RAY_API_SERVER_ADDRESS", help=ADDRESS_HELP)(fn)
    return click.argument("job_id")(fn)


@jobs.command("status")
@_job_command
def jobs_status(job_id: str, address: str | None, insecure: bool) -> None:
    """Print a job's status and message."""
    from tlsearch import cluster

    info = cluster.job_status(cluster.connect(address, insecure), job_id)
    click.echo(f"{info['job_id']}: {info['status']}" + (f" ({info['message']})" if info["message"] else ""))


@jobs.command("logs")
@_job_command
def jobs_logs(job_id: str, address: str | None, insecure: bool) -> None:
    """Print a job's output so far."""
    from tlsearch import cluster

    conn = cluster.connect(address, insecure)
    click.echo(cluster.redact(cluster.job_logs(conn, job_id), conn.token), nl=False)


@jobs.command("stop")
@_job_command
def jobs_stop(job_id: str, address: str | None, insecure: bool) -> None:
    """Ask a running job to stop."""
    from tlsearch import cluster

    stopped = cluster.stop_job(cluster.connect(address, insecure), job_id)
    click.echo(f"{job_id}: " + ("stop requested" if stopped else "was not running"))


@cli.group("cluster")
def cluster_group() -> None:
    """Cluster files: Ray cluster-launcher configs and KubeRay manifests."""


@cluster_group.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@domain_errors
def cluster_validate(files: tuple[str, ...]) -> None:
    """Check cluster files offline; print each problem as FILE:PATH: MESSAGE and exit 2 when any."""
    from tlsearch import cluster

    problems = cluster.validate_files(files)
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        bad = len({p.file for p in problems})
        raise InputError(f"{len(problems)} problem(s) in {bad} of {len(files)} file(s)")
    click.echo(f"tlsearch: {len(files)} file(s) valid")
