"""The ``aepipe`` command line. Heavy imports happen inside commands, so --help is instant."""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer


@functools.cache
def params_here() -> dict[str, Any]:
    """./params.yaml, parsed once, for --help (empty when it is missing or broken)."""
    import yaml

    try:
        found = yaml.safe_load(Path("params.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return found if isinstance(found, dict) else {}


def default_of(key: str) -> str:
    """``key``'s value in ./params.yaml, for --help: `` [params.yaml: 40]``, or empty."""
    section, _, name = key.partition(".")
    values = params_here().get(section)
    if not isinstance(values, dict) or name not in values:
        return ""
    value = values[name]
    return f" [params.yaml: {'null' if value is None else value}]"


app = typer.Typer(
    help="aepipe: train autoencoders on tables and export their latent tables.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # reflows docstring paragraphs to the terminal's width
)

PARAMS_HELP = "Parameters file holding every default."
STOPPED = {
    "epochs": "all of train.epochs",
    "early_stopping": "stopped early (train.patience)",
    "max_steps": "stopped by its step budget (train.max_steps)",
    "max_minutes": "stopped by its time budget (train.max_minutes)",
}
Params = Annotated[Path, typer.Option("--params", help=PARAMS_HELP)]
TaskRunner = Annotated[
    str | None,
    typer.Option(
        help="local or dask: per-file work on a Dask cluster (prefect-dask)."
        + default_of("orchestration.task_runner")
    ),
]
DaskAddress = Annotated[
    str | None, typer.Option(help="A running Dask scheduler, tcp://...; default: a local cluster.")
]


def show_version(value: bool) -> None:
    """Print the installed version and exit (``--version``)."""
    if value:
        from importlib.metadata import version

        typer.echo(f"aepipe {version('aepipe')}")
        raise typer.Exit


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """aepipe: train autoencoders on tables and export their latent tables.

    Every default lives in params.yaml; an option overrides it for one run.
    """


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """Turn ``--set key=value`` pairs into overrides; values are parsed as YAML scalars."""
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"--set {pair!r}: expected section.key=value")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            reason = str(error).splitlines()[0]
            fail(f"--set {key.strip()}: not a plain YAML value ({reason})")
    return overrides


@app.command()
def run(
    source: Annotated[
        str | None,
        typer.Option(
            help="CSV/Parquet/JSONL file, folder, glob or URL." + default_of("data.source")
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset name; default: from the source." + default_of("data.dataset")),
    ] = None,
    id_col: Annotated[
        str | None,
        typer.Option(help="Id column; null: an added row_id." + default_of("data.id_col")),
    ] = None,
    label_col: Annotated[
        str | None,
        typer.Option(help="Label column (0/1: AUROC)." + default_of("data.label_col")),
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="dense, denoising, sparse or vae." + default_of("model.kind"))
    ] = None,
    latent_dim: Annotated[
        int | None,
        typer.Option(
            help="Latent size k; null: an eighth of the inputs." + default_of("model.latent_dim")
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Most epochs to train." + default_of("train.epochs"))
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or mps." + default_of("train.device"))
    ] = None,
    task_runner: TaskRunner = None,
    dask_address: DaskAddress = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any parameter: section.key=value.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue training from the checkpoint an interrupted run left."),
    ] = False,
    preset: Annotated[
        str | None,
        typer.Option(help="A preset of params.yaml's presets, e.g. compress: the smallest error."),
    ] = None,
    params: Params = Path("params.yaml"),
) -> None:
    """Run the train-autoencoder flow: ingest, normalize, train, evaluate, export.

    A password in the source URL stays in this process: the flow, MLflow and the logs get
    the URL without it. Better still, write ``${NAME}`` and set environment variable NAME.
    """
    start = time.perf_counter()
    source = keep_secrets_here(source)
    overrides = {
        "model.kind": kind,
        "model.latent_dim": latent_dim,
        "train.epochs": epochs,
        "train.device": device,
        "orchestration.task_runner": task_runner,
        "orchestration.dask_address": dask_address,
    }
    overrides |= parse_sets(set_ or [])
    resolved = preflight(params, source, dataset, id_col, label_col, overrides, preset)
    from flows import server

    temporary = server.start_if_needed()  # starts while the imports below run
    from aecore.errors import AepipeError

    try:
        from flows import tracking
        from flows.runners import with_task_runner
        from flows.train import train_autoencoder

        hide_tracebacks_of_user_errors()

        tracking.warm_up(Path.cwd(), resolved.data.dataset)
        if temporary:
            temporary.wait_ready()
        flow = with_task_runner(train_autoencoder, resolved.orchestration)
        summary = flow(
            source=source,
            dataset=dataset,
            id_col=id_col,
            label_col=label_col,
            overrides=overrides,
            params_path=str(params),
            root=str(Path.cwd()),
            resume=resume,
            preset=preset,
        )
    except AepipeError as error:
        fail(str(error))
    print_summary(summary, time.perf_counter() - start)


def keep_secrets_here(source: str | None) -> str | None:
    """The source with its credentials hidden; only this process can open it again."""
    if source is None:
        return None
    from aecore.io import hide_secrets

    return hide_secrets(source)


def preflight(
    params: Path,
    source: str | None,
    dataset: str | None,
    id_col: str | None,
    label_col: str | None,
    overrides: dict[str, Any],
    preset: str | None = None,
) -> Any:
    """Check the parameters, the source and its columns before any server or run starts.

    A mistake exits here with one line and status 2: nothing written, nothing tracked.
    """
    from aecore.config import resolve_params
    from aecore.errors import AepipeError
    from aecore.schema import check_source

    try:
        resolved = resolve_params(params, source, dataset, id_col, label_col, overrides, preset)
        check_source(resolved.data)
    except AepipeError as error:
        fail(str(error))
    return resolved


def exit_now(code: int = 0) -> None:
    """Exit once the exit handlers ran, skipping the interpreter's slow teardown.

    Everything is written and closed by now; tearing down torch, mlflow and prefect
    module by module would add about 2 s to every run.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()  # sends Prefect's last logs while its server still listens
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's, not public
    if run_exit_handlers is None:
        sys.exit(code)  # the slow, ordinary way
    run_exit_handlers()  # then stops the temporary server
    os._exit(code)


class _UserErrorFilter(logging.Filter):
    """Keep user mistakes off the console: the CLI prints them once, on one line.

    Prefect's server still gets every record (its handler is not filtered).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from aecore.errors import AepipeError

        if record.exc_info and isinstance(record.exc_info[1], AepipeError):
            return False
        return "AepipeError" not in record.getMessage()


def hide_tracebacks_of_user_errors() -> None:
    """Keep Prefect's console log free of the errors that the CLI prints itself."""
    for logger in (logging.getLogger(), logging.getLogger("prefect")):
        for handler in logger.handlers:
            if type(handler).__name__ != "APILogHandler":
                handler.addFilter(_UserErrorFilter())


def shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def human_bytes(count: float) -> str:
    """``1.2 MB``: bytes in the largest unit that keeps a number of at least 1."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000
    return f"{count:,.1f} TB"


def print_summary(summary: dict[str, Any], wall_s: float) -> None:
    """Print what a run produced, with the time split between stages and orchestration."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    metrics = summary["metrics"]
    table = Table(title=f"aepipe run: {summary['dataset']}", show_header=False)
    table.add_row("rows", f"{metrics['rows']:,} ({metrics['features']} features)")
    table.add_row("latent dim", str(metrics["latent_dim"]))
    vs_pca = metrics["recon_mse_vs_pca"]  # infinite where PCA's k covers every input
    table.add_row(
        "held-out recon MSE",
        f"{metrics['recon_mse']:.4f}  vs PCA {metrics['pca_recon_mse']:.4f} "
        + (f"(ratio {vs_pca:.3f})" if math.isfinite(vs_pca) else "(PCA exact: k >= inputs)"),
    )
    fit = summary.get("fit", {})
    if fit:
        rows = f"{fit['train_rows']:,} of {fit['train_rows_total']:,} training rows"
        rows += " (a uniform sample)" if fit["train_sampled"] else ""
        resumed = fit.get("resumed_epochs", 0)
        table.add_row(
            "training",
            f"{fit['epochs_run']} epochs"
            + (f" ({resumed} resumed)" if resumed else "")
            + f", {STOPPED[fit['stopped']]}; batch {fit['batch_size']}; {rows}",
        )
    if "auroc" in metrics:
        table.add_row("AUROC / AP", f"{metrics['auroc']:.4f} / {metrics['avg_precision']:.4f}")
    table.add_row(
        "threshold", f"{metrics['threshold']:.4g} (anomaly rate {metrics['anomaly_rate']:.2%})"
    )
    ratio, latent_bytes = metrics["compression_ratio"], metrics["latent_bytes"]
    size = f"{ratio:.1f}x smaller" if ratio >= 1 else f"{1 / ratio:.1f}x larger"
    table.add_row("latent table", shown_path(Path(summary["latent_table"])))
    table.add_row(
        "table size",
        f"{human_bytes(latent_bytes)} against the source's {human_bytes(latent_bytes * ratio)} "
        f"as Parquet: {size}",
    )
    champion = " (champion)" if summary["champion"] else ""
    table.add_row(
        "model", f"{summary['dataset']}-autoencoder v{summary['model_version']}{champion}"
    )
    table.add_row("champion", summary["champion_reason"])
    table.add_row("MLflow run", f"{summary['run_id']}  (browse: aepipe ui)")
    stages = summary["stage_seconds"]
    inside = sum(stages.values())
    split = "  ".join(f"{name} {seconds:.1f}" for name, seconds in stages.items())
    table.add_row(
        "time (s)",
        f"total {wall_s:.1f} = stages {inside:.1f} ({split}) + orchestration {wall_s - inside:.1f}",
    )
    console = Console()
    console.print(table)
    for warning in summary.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)


@app.command()
def score(
    source: Annotated[
        str | None,
        typer.Option(help="File, folder, glob or URL: one batch. Default: the inbox's new files."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model URI; default models:/DATASET-autoencoder@champion.")
    ] = None,
    batch_id: Annotated[
        str | None, typer.Option(help="Partition name; default: the file's.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset; default: the one trained last here, else params.yaml's."),
    ] = None,
    task_runner: TaskRunner = None,
    dask_address: DaskAddress = None,
    params: Params = Path("params.yaml"),
) -> None:
    """Run the score-batch flow: encode and score new rows with the registered model.

    Without ``--dataset`` or ``--model``, the model is that of the dataset trained last in
    this project, so ``aepipe run --source a.csv`` then ``aepipe score --source b.csv``
    scores b with a's model. (The served deployment keeps params.yaml's dataset.)
    """
    source = keep_secrets_here(source)
    overrides = {
        "orchestration.task_runner": task_runner,
        "orchestration.dask_address": dask_address,
    }
    from aecore.config import load_params
    from aecore.errors import AepipeError
    from aecore.io import Source
    from aecore.layout import scoring_target

    try:  # mistakes end here, before any server or run starts
        resolved = load_params(params, overrides)
        dataset = dataset_to_score(dataset, model)
        scoring_target(Path.cwd(), resolved.data.dataset, source, model, batch_id, dataset)
        if source is not None:
            Source(source).schema()  # every file opens and has columns
    except AepipeError as error:
        fail(str(error))
    from flows import server

    temporary = server.start_if_needed()
    try:
        from flows.runners import with_task_runner
        from flows.score import score_batches

        hide_tracebacks_of_user_errors()
        if temporary:
            temporary.wait_ready()
        flow = with_task_runner(score_batches, resolved.orchestration)
        results = flow(
            source=source,
            model=model,
            batch_id=batch_id,
            dataset=dataset,
            overrides=overrides,
            params_path=str(params),
            root=str(Path.cwd()),
        )
    except AepipeError as error:
        fail(str(error))
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    if not results:
        console.print("no new files to score")
    for result in results:
        metrics = result["metrics"]
        console.print(
            f"batch {result['batch_id']}: {metrics['rows']:,} rows, anomaly rate "
            f"{metrics['anomaly_rate']:.2%}, drift KS {metrics['drift_ks']:.3f} -> "
            f"{result['partition']} (MLflow run {result['run_id']})",
            highlight=False,
        )
        for warning in result["warnings"]:
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)


@app.command()
def serve(params: Params = Path("params.yaml")) -> None:
    """Serve train-autoencoder/weekly and score-batch/nightly on their cron schedules."""
    import os

    if not os.environ.get("PREFECT_API_URL"):
        from flows.server import configured_in_profile

        if not configured_in_profile():
            fail(
                "serving needs a Prefect server: run `prefect server start --host 127.0.0.1` "
                "and set PREFECT_API_URL=http://127.0.0.1:4200/api"
            )
    from aecore.config import load_params
    from aecore.errors import AepipeError

    try:
        loaded = load_params(params)
        schedule, orchestration = loaded.schedule, loaded.orchestration
    except AepipeError as error:
        fail(str(error))
    from prefect import serve as prefect_serve

    from flows.runners import with_task_runner
    from flows.score import score_batches
    from flows.train import train_autoencoder

    common = {"params_path": str(params), "root": str(Path.cwd())}
    train_flow, score_flow = (
        with_task_runner(f, orchestration) for f in (train_autoencoder, score_batches)
    )
    prefect_serve(
        train_flow.to_deployment(name="weekly", cron=schedule.train_cron, parameters=common),
        score_flow.to_deployment(name="nightly", cron=schedule.score_cron, parameters=common),
    )


@app.command("make-data")
def make_data(
    out: Annotated[Path, typer.Argument(help="Folder to write Parquet files into.")],
    rows: Annotated[int, typer.Option(help="Number of rows.")] = 100_000,
    cols: Annotated[int, typer.Option(help="Number of feature columns.")] = 64,
    anomaly_rate: Annotated[float, typer.Option(help="Share of planted anomalies.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    rows_per_file: Annotated[int, typer.Option(help="Rows per Parquet file.")] = 1_048_576,
) -> None:
    """Write a synthetic table (low rank + noise, planted anomalies, a label), streaming."""
    from aecore.errors import AepipeError
    from aecore.synthetic import make_data as write

    try:
        files = write(out, rows, cols, anomaly_rate, seed, rows_per_file)
    except AepipeError as error:
        fail(str(error))
    typer.echo(f"wrote {rows:,} rows x {cols} columns to {len(files)} files in {out}")


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="ingest, normalize, train, evaluate or export.")],
    params: Params = Path("params.yaml"),
) -> None:
    """Run one stage with params.yaml, without Prefect: what dvc.yaml calls."""
    from aecore.config import load_params
    from aecore.errors import AepipeError
    from aecore.pipeline import STAGES
    from flows.stages import run

    if name not in STAGES:
        fail(f"unknown stage {name!r}; one of {', '.join(STAGES)}")
    try:
        run(name, load_params(params), Path.cwd())
    except AepipeError as error:
        fail(str(error))


data_app = typer.Typer(help="Data versions (DVC) of past runs.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("restore")
def data_restore(
    run_id: Annotated[str, typer.Argument(help="The MLflow run whose data to restore.")],
) -> None:
    """Restore the raw input and latent table of an MLflow run, byte for byte."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from aecore.errors import AepipeError
    from flows import tracking, versioning

    root = Path.cwd()
    tracking.configure(root)
    try:
        tags = MlflowClient().get_run(run_id).data.tags
    except MlflowException:
        fail(f"MLflow run {run_id!r} not found in {redact(tracking.tracking_uri(root))}")
    try:
        restored = versioning.restore(root, tags)
    except AepipeError as error:
        fail(str(error))
    for path in restored:
        typer.echo(f"restored {path.relative_to(root)}")


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Open the MLflow UI on 127.0.0.1 over the project's tracking store."""
    from flows.tracking import artifact_root, configure, tracking_uri

    refuse_busy(port)
    configure(Path.cwd())
    uri = tracking_uri(Path.cwd())
    if uri.startswith(("http://", "https://")):
        fail(f"MLFLOW_TRACKING_URI points at a tracking server: open {redact(uri)} instead")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    if artifact_root(Path.cwd()):
        command += ["--default-artifact-root", str(artifact_root(Path.cwd()))]
    typer.echo(f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C to stop)", err=True)
    # browsing runs needs no GenAI job workers: seven fewer processes, unless asked for
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    raise typer.Exit(run_group(command, env))


def run_group(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` in a process group of its own until it ends or we are stopped.

    Ctrl-C or SIGTERM stops the whole group, so no worker it started outlives it.
    """
    import signal
    import subprocess

    child = subprocess.Popen(command, env=env, start_new_session=True)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return child.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        return 0


def dataset_to_score(dataset: str | None, model: str | None) -> str | None:
    """The dataset given, or, when neither it nor a model is, the one trained last here."""
    if dataset is not None or model is not None:
        return dataset
    from aecore.layout import trained_last

    found = trained_last(Path.cwd())
    if found:
        print(f"dataset: {found} (trained last here; --dataset to choose)")
    return found


def refuse_busy(port: int) -> None:
    """Exit with status 2 when ``port`` on 127.0.0.1 is taken."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            fail(f"port {port} on 127.0.0.1 is in use; choose another with --port")


@app.command("serve-model")
def serve_model(
    model: Annotated[
        str | None, typer.Option(help="Model URI; default models:/DATASET-autoencoder@champion.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset; default: the one trained last here, else params.yaml's."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5001,
    params: Params = Path("params.yaml"),
) -> None:
    """Serve a registered model over HTTP on 127.0.0.1 (MLflow's scoring server).

    POST rows to ``/invocations`` (``{"dataframe_records": [...]}``); each comes back with
    its latents, errors, anomaly score and flag, as in the latent table. Runs in this
    environment, without building another one.
    """
    from aecore.config import load_params
    from aecore.errors import AepipeError
    from aecore.layout import scoring_target
    from flows.tracking import configure, tracking_uri

    refuse_busy(port)
    try:
        dataset = dataset_to_score(dataset, model)
        target = scoring_target(
            Path.cwd(), load_params(params).data.dataset, None, model, None, dataset
        )
    except AepipeError as error:
        fail(str(error))
    configure(Path.cwd())
    here = str(Path(sys.executable).parent)  # MLflow starts its server from PATH
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri(Path.cwd()),
        "PATH": os.pathsep.join([here, os.environ.get("PATH", "")]),
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", target.model_uri]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    typer.echo(
        f"{target.model_uri} on http://127.0.0.1:{port}/invocations (Ctrl-C to stop)", err=True
    )
    raise typer.Exit(run_group(command, env))


def redact(url: str) -> str:
    """Hide credentials in a URL before printing it."""
    from aecore.io import redact_url

    return redact_url(url)


def main() -> None:
    """Entry point of the console script.

    Every exit, a mistake's status 2 included, skips the interpreter's teardown once the
    command has unwound (``exit_now``): native thread pools still reading (Arrow's CSV
    read-ahead from a file that failed) can abort a process torn down around them, which
    turned a clean one-line error into a SIGABRT now and then.
    """
    try:
        app()
    except SystemExit as done:
        code = done.code
        if isinstance(code, str):  # sys.exit("message"): said as Python would say it
            print(code, file=sys.stderr)
        exit_now(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    main()
