"""Every use of Lightning's private API, in one place.

What the package reads or calls goes through the functions below; what it overrides is listed in
:data:`OVERRIDDEN`. :func:`check_private_api` (run at the command's start and by ``tests/test_compat.py``) names
what a Lightning upgrade removed or changed, instead of letting a run fail later or quietly behave differently.
"""
from __future__ import annotations

import inspect
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI

# Private methods overridden by deeplab_lightning: {class: {name: (its leading parameter names, reason)}}.
OVERRIDDEN: dict[type, dict[str, tuple[tuple[str, ...], str]]] = {
    LightningCLI: {
        "_parse_ckpt_path": ((), "cli.DeepLabCLI builds the model from the config, not from the hyperparameters "
                                 "saved in --ckpt_path"),
        "_prepare_subcommand_parser": (("klass", "subcommand", "kwargs"),
                                       "cli.DeepLabCLI adds predict's --output_dir and --overwrite"),
        "_instantiate_trainer": (("config", "callbacks"),
                                 "cli.DeepLabCLI adds the standard callbacks a config does not set"),
    },
    RichProgressBar: {
        "_update_metrics": (("trainer", "pl_module"),
                            "callbacks.ProgressBar reads the logged metrics at most every metrics_every_s"),
        "_get_train_description": (("current_epoch",),
                                   "callbacks.ProgressBar drops the '/-2' of 'Epoch N/-2' when max_epochs is -1"),
    },
}

# Private methods called by deeplab_lightning, in the same form (the parameters it passes; each call through a
# function below).
CALLED: dict[type, dict[str, tuple[tuple[str, ...], str]]] = {
    ModelCheckpoint: {
        "_monitor_candidates": (("trainer",), "save_last_checkpoint: the metrics last.ckpt's name may use"),
        "_save_last_checkpoint": (("trainer", "monitor_candidates"),
                                  "save_last_checkpoint: last.ckpt after every validation (callbacks.run_safety)"),
    },
    RichProgressBar: {
        "_update": (("progress_bar_id", "current"),
                    "set_bar_position: a step-based bar starts each epoch at the global step"),
    },
}


class PrivateAPIChanged(RuntimeError):
    """The installed Lightning lacks, or changed, a private method or attribute deeplab_lightning relies on."""


def _changed(what: str) -> PrivateAPIChanged:
    return PrivateAPIChanged(f"Lightning {L.__version__} changed private API deeplab_lightning relies on: {what}. "
                             f"Install the lightning version requirements.txt names, or update "
                             f"deeplab_lightning/compat.py")


def check_private_api() -> None:
    """Raise :class:`PrivateAPIChanged` naming every method of :data:`OVERRIDDEN` and :data:`CALLED` that the
    installed Lightning no longer has, or whose leading parameters changed (Lightning 2.6.0 and 2.6.6 pass)."""
    problems = []
    for table in (OVERRIDDEN, CALLED):
        for owner, methods in table.items():
            for name, (expected, reason) in methods.items():
                method = getattr(owner, name, None)
                if method is None:
                    problems.append(f"{owner.__name__}.{name} is gone ({reason})")
                    continue
                found = tuple(p for p in inspect.signature(method).parameters if p != "self")
                if found[:len(expected)] != expected:
                    problems.append(f"{owner.__name__}.{name} takes ({', '.join(found)}), not "
                                    f"({', '.join(expected)}) ({reason})")
    if problems:
        raise _changed("; ".join(problems))


def loop_position(trainer: L.Trainer) -> tuple[int, int]:
    """(epochs completed, batches completed in the current epoch) of the fit loop, restored on resume.

    Reason: only the loops' progress counters say where a resumed fit stands; the training sampler continues
    from there (data/base.py)."""
    try:
        loop = trainer.fit_loop
        return loop.epoch_progress.current.processed, loop.epoch_loop.batch_progress.current.processed
    except AttributeError as err:
        raise _changed(f"the fit loop's progress counters moved ({err}); a resumed fit continues its sampler "
                       f"from them") from err


def console_kwargs(bar: RichProgressBar) -> dict[str, Any]:
    """The ``console_kwargs`` a rich progress bar was given.

    Reason: RichProgressBar keeps them privately; ProgressBar builds the same console to see whether the output
    is a terminal before the bar starts."""
    try:
        return bar._console_kwargs or {}
    except AttributeError as err:
        raise _changed("RichProgressBar._console_kwargs is gone; ProgressBar tells a terminal from a log file "
                       "with it") from err


def set_bar_position(bar: RichProgressBar, bar_id: Any, current: int) -> None:
    """Move the rich bar ``bar_id`` to ``current``.

    Reason: the public hooks only advance a bar by the epoch's batch index; a step-based bar starts each epoch
    at the global step."""
    bar._update(bar_id, current)


def wandb_init_kwargs(logger: Any) -> dict[str, Any] | None:
    """The keyword arguments a ``WandbLogger`` will pass to ``wandb.init`` (editable until the run starts);
    None for another logger, or where Lightning keeps them no longer.

    Reason: WandbLogger keeps them privately; quiet.drop_wandb_anonymous removes a setting wandb warns about."""
    init = getattr(logger, "_wandb_init", None)
    return init if isinstance(init, dict) else None


def save_last_checkpoint(callback: ModelCheckpoint, trainer: L.Trainer) -> bool:
    """Write ``callback``'s ``last.ckpt`` now unless it saved a checkpoint at this global step; returns whether
    it wrote one.
    Reason: Lightning 2.6 writes ``last.ckpt`` only at a validation that also writes a top-k checkpoint, so on a
    plateau it holds an old step; a resumed run would repeat the steps since."""
    try:
        if not callback.save_last or callback._last_global_step_saved == trainer.global_step:
            return False
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
    except AttributeError as err:
        raise _changed(f"ModelCheckpoint's last-checkpoint methods moved ({err}); last.ckpt is written after "
                       f"every validation with them") from err
    return True
