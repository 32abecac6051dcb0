"""The ``dipod`` command: train, sft, eval, report, demo (the CLI contract).

Heavy imports (torch, the trainers) happen inside the commands, so ``--help`` answers at once.
Config problems (unknown keys, wrong types, bad values, a run directory that cannot be used) print
one message and exit with status 2 before any work starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="RL post-training of diffusion policies with DiPOD's on-policy ELBO term.",
    pretty_exceptions_enable=False,
)

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override config values: --set objective.dipod_beta=0.05 train.steps=10 (or repeat --set)."
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or tables (for CI and logs).")]

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def expand_set_args(argv: list[str]) -> list[str]:
    """``--set a=1 b=2`` -> ``--set a=1 --set b=2``: several overrides may follow one ``--set``.

    A word after ``--set`` is another override while it holds ``=`` and is not an option, so a positional
    argument (a config path) after the overrides still reads as one.
    """
    out: list[str] = []
    in_set = False  # inside the overrides of the last --set
    for word in argv:
        if word == "--set":
            in_set = True
        elif in_set and out[-1] != "--set" and "=" in word and not word.startswith("-"):
            out.append("--set")  # another override of the same flag
        elif out and out[-1] != "--set":
            in_set = False
        out.append(word)
    return out


def _load_config(config: Path, overrides: list[str] | None):
    """The validated config, or exit 2 with the one-line message that names the bad key."""
    from dipod.config import ConfigError
    from dipod.runs.config import load_config

    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_CONFIG) from None


def _default_out(name: str) -> Path:
    """runs/NAME, or runs/NAME-2, -3, ... if that already holds something."""
    base = Path("runs") / name
    out, n = base, 1
    while out.exists() and any(out.iterdir()):
        n += 1
        out = base.with_name(f"{name}-{n}")
    return out


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/).")],
    set_: SetOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<name>).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint (it must have one).")
    ] = False,
    auto_resume: Annotated[
        bool, typer.Option("--auto-resume", help="Continue the run in --out if it has a checkpoint, else start it.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Train a policy: writes config.yaml, metrics.jsonl, summary.json, checkpoints/ and tb/ into the run dir."""
    from dipod.config import ConfigError
    from dipod.runs import BadStepsError, CheckpointError, run_training, trainers
    from dipod.runs.loop import RunDirError, process_rank

    cfg = _load_config(config, set_)
    if resume and auto_resume:
        raise _fail("--resume and --auto-resume exclude each other", EXIT_CONFIG)
    if (resume or auto_resume) and out is None:
        raise _fail("--resume and --auto-resume need --out DIR (the run directory to continue)", EXIT_CONFIG)
    out = out or _default_out(cfg.name)
    mode = "always" if resume else "auto" if auto_resume else "never"
    try:
        result = run_training(cfg, out, trainer_factory=trainers.build_trainer, resume=mode, quiet=quiet)
    except (ConfigError, RunDirError) as exc:
        raise _fail(str(exc), EXIT_CONFIG) from None
    except (CheckpointError, BadStepsError) as exc:
        raise _fail(str(exc), 1) from None
    if result.status == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)
    if process_rank() == 0:
        typer.echo(f"run finished: {out} (step {result.step}, final reward {result.summary.get('final_reward')})")


@app.command()
def sft(
    config: Annotated[Path, typer.Argument(help="YAML run config with a language section.")],
    set_: SetOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output directory (default runs/<name>-sft).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the SFT run in --out.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Supervised pre-training of a base policy: a language model on the task's reference solutions, or a flow
    policy cloned from demonstrations (a control config with ``control.bc.dataset``)."""
    cfg = _load_config(config, set_)
    from dipod.checkpoints import CheckpointError
    from dipod.config import ConfigError
    from dipod.runs.loop import RunDirError
    from dipod.runs.sft import SFTInterrupted, train_bc, train_sft

    out = out or _default_out(f"{cfg.name}-sft")
    mode = "always" if resume else "never"
    try:
        if cfg.domain == "control":
            result = train_bc(cfg, out_dir=out, resume=mode, quiet=quiet)
            evals = [row for row in result.rows if "eval/return" in row]
            final = f", eval return {evals[-1]['eval/return']:.1f}" if evals else ""
            typer.echo(f"bc finished: checkpoints in {out / 'checkpoints'} (control.init_from: {out}){final}")
            return
        _, _, history = train_sft(cfg, out_dir=out, resume=mode, quiet=quiet)
    except (ConfigError, RunDirError) as exc:
        raise _fail(str(exc), EXIT_CONFIG) from None
    except CheckpointError as exc:
        raise _fail(str(exc), 1) from None
    except SFTInterrupted:
        raise typer.Exit(EXIT_INTERRUPTED) from None  # the loop has said where it stopped and how to continue
    evals = [row for row in history if "eval/accuracy" in row]
    final = f", eval accuracy {evals[-1]['eval/accuracy']:.3f}" if evals else ""
    typer.echo(f"sft finished: model and tokenizer in {out}{final}")


@app.command()
def collect(
    run: Annotated[Path, typer.Argument(help="Control run directory or checkpoint whose policy is the expert.")],
    out: Annotated[Path, typer.Option("--out", help="New Minari dataset directory.")],
    episodes: Annotated[int, typer.Option("--episodes", min=1, help="Episodes to record.")] = 50,
    noise: Annotated[
        float, typer.Option("--noise", min=0.0, help="Action noise std, as a fraction of the action box's half-width.")
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seeds the episodes' resets and the noise.")] = 0,
    max_episode_steps: Annotated[int | None, typer.Option("--max-episode-steps", min=1)] = None,
) -> None:
    """Record demonstrations of a trained policy into a local Minari dataset (for ``dipod sft`` of a control config).

    A partly trained run with some --noise gives "medium" data, D4RL-style. Nothing is uploaded or downloaded.
    """
    from dipod.checkpoints import CheckpointError
    from dipod.control.demos import DemonstrationError, collect_demonstrations
    from dipod.control.experts import expert_policy_fn

    try:
        policy, expert = expert_policy_fn(run, seed=seed)
        summary = collect_demonstrations(
            expert.env, policy, episodes=episodes, out=out, action_noise=noise, seed=seed,
            max_episode_steps=max_episode_steps, description=f"dipod collect {run} (step {expert.step}, noise {noise})",
        )  # fmt: skip
    except (FileNotFoundError, FileExistsError, CheckpointError, DemonstrationError, ValueError) as exc:
        raise _fail(str(exc), EXIT_CONFIG) from None
    typer.echo(
        f"collected {summary.episodes} episodes ({summary.steps} steps, return {summary.return_mean:.1f} ± "
        f"{summary.return_std:.1f}) into {summary.path} in {summary.seconds:.1f} s"
    )


def _load_target(target: Path) -> tuple[Path, dict, Path | None]:
    """(checkpoint file, its payload, run dir or None) for a checkpoint path or a run directory.

    For a run directory the newest readable checkpoint is used, falling back past unreadable ones.
    """
    from dipod.checkpoints import latest_checkpoint, load_checkpoint

    if target.is_file():
        run_dir = target.parent.parent if target.parent.name == "checkpoints" else None
        return target, load_checkpoint(target), run_dir
    found = latest_checkpoint(target / "checkpoints", warn=lambda m: typer.echo(m, err=True))
    if found is None:
        raise FileNotFoundError(f"{target} is neither a checkpoint file nor a run directory with checkpoints/")
    return found[0], found[1], target


@app.command("eval")
def eval_(
    target: Annotated[Path, typer.Argument(help="Run directory (its last checkpoint) or a checkpoint file.")],
    set_: SetOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="JSON file for the results.")] = None,
    quiet: QuietOption = False,
) -> None:
    """Evaluate a checkpoint (accuracy / return, reward, effective tokens, NFE) and write the metrics as JSON."""
    from dipod.checkpoints import CheckpointError
    from dipod.config import ConfigError, apply_overrides
    from dipod.runs import open_trainer, trainers, validate_config
    from dipod.runs.rng import set_global_rng_state

    try:
        path, payload, run_dir = _load_target(target)
    except (FileNotFoundError, CheckpointError) as exc:
        raise _fail(str(exc), 1) from None
    try:
        cfg = validate_config(apply_overrides(payload["config"], set_ or []), source=f"checkpoint {path}")
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_CONFIG) from None
    try:
        # Evaluation builds envs of its own: the trainer skips its training envs' snapshots (restore_envs=False),
        # so e.g. --set control.num_envs=... does not matter here.
        trainer = open_trainer(cfg, trainers.build_trainer, payload, path, restore_envs=False)
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_CONFIG) from None
    except CheckpointError as exc:
        raise _fail(f"cannot load {path} into a trainer built from its config (with --set applied): {exc}", 1) from None
    set_global_rng_state(payload["rng"])
    metrics = {"step": trainer.step, "samples": trainer.samples, **trainer.evaluate()}
    trainer.close()
    if out is None and run_dir is not None:
        out = run_dir / f"eval_step_{trainer.step:08d}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"checkpoint": str(path), **metrics}, indent=2) + "\n")
    if quiet:
        typer.echo(json.dumps(metrics))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"eval of {path}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in metrics.items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        Console().print(table)
    if out is not None:
        typer.echo(f"wrote {out}")


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to compare.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md and the PNG plots.")] = Path("report"),
    quiet: QuietOption = False,
) -> None:
    """Plots and a markdown table comparing runs: mean ± std over seeds, grouped by variant."""
    from dipod.runs.report import write_report

    try:
        files = write_report(run_dirs, out)
    except FileNotFoundError as exc:
        raise _fail(str(exc), 1) from None
    if not quiet:
        typer.echo((out / "report.md").read_text())
    typer.echo(f"report written to {out} ({len(files)} files)")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's runs and report.")] = Path("dipod-demo"),
    budget: Annotated[str, typer.Option("--budget", help="default (minutes on a CPU) or small (seconds).")] = "default",
    jobs: Annotated[
        int | None, typer.Option("--jobs", min=1, help="Runs trained at once (default: CPU cores, at most 2).")
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """CPU end-to-end comparison: FPO vs FPO + DiPOD on 4x4 Sudoku and FPO++ vs FPO++ + DiPOD on control."""
    from dipod.config import ConfigError
    from dipod.demo import BUDGETS, run_demo

    if budget not in BUDGETS:
        raise _fail(f"--budget {budget!r}: choose one of {', '.join(BUDGETS)}", EXIT_CONFIG)
    try:
        report_dir = run_demo(out, budget=budget, quiet=quiet, jobs=jobs)
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_CONFIG) from None
    if report_dir is None:
        raise typer.Exit(EXIT_INTERRUPTED)
    typer.echo(f"demo finished: report in {report_dir / 'report.md'}")


def main() -> None:
    """Entry point of the ``dipod`` console script."""
    app(args=expand_set_args(sys.argv[1:]), prog_name="dipod")


if __name__ == "__main__":
    main()
