"""Where a training run's per-step numbers go: ``metrics.jsonl`` (always; the source of the reward
plot and of `s3 train` summaries), TensorBoard event files, Weights & Biases when enabled and
installed, and Prometheus (:mod:`s3core.train.metrics`)."""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Mapping

from s3core.io import write_jsonl

logger = logging.getLogger(__name__)

__all__ = ["TrainLogger", "read_metrics", "plot_rewards", "plot_validation", "VALIDATION"]

WANDB_FILE = "wandb.json"  # the run folder's W&B run id (resume continues that run)
VALIDATION = "validation"  # the ``kind`` of validation rows in metrics.jsonl (training rows: "train")


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                logger.warning("%s: skipping a torn line (a crash while writing)", p)
    return rows


class TrainLogger:
    def __init__(self, run_dir: str | os.PathLike[str], *, tb_dir: str = "", wandb: bool = False,
                 wandb_project: str = "s3", config: Mapping[str, Any] | None = None, start_step: int = 0,
                 keep_start_validation: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        # a resumed run continues the file from its checkpoint: steps after it were lost with the crash
        # (and the start step's validation row, when the run validates that step again)
        kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= start_step
                and (keep_start_validation or r.get("kind") != VALIDATION or int(r.get("step", 0)) < start_step)]
        write_jsonl(self.path, kept)
        self._fh = self.path.open("a", encoding="utf-8")
        self._tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(tb_dir or self.run_dir / "tb"), purge_step=start_step + 1)
        except ImportError:
            logger.warning("tensorboard is not installed: no TensorBoard event files")
        self._wandb: Any = None
        if wandb:
            try:
                import wandb as wandb_mod
            except ImportError:
                logger.warning("train.wandb is on but wandb is not installed: not logging to W&B")
            else:
                self._wandb = self._wandb_init(wandb_mod, wandb_project, config)

    def _wandb_init(self, wandb_mod: Any, project: str, config: Mapping[str, Any] | None) -> Any:
        """Open the run's W&B run: the id kept in ``wandb.json`` of the run folder, so a resumed run
        (and a restarted job pod) continues the same W&B run instead of opening a new one each time."""
        path = self.run_dir / WANDB_FILE
        run_id = ""
        if path.is_file():
            try:
                run_id = str(json.loads(path.read_text(encoding="utf-8")).get("id") or "")
            except (ValueError, AttributeError):
                logger.warning("%s is unreadable: opening a new W&B run", path)
        run_id = run_id or secrets.token_hex(8)
        run = wandb_mod.init(project=project, id=run_id, resume="allow", config=dict(config or {}))
        got = str(getattr(run, "id", "") or run_id)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"id": got, "project": project}) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return run

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        rec = {"step": step, "kind": "train", **row}
        self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        scalars = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"train/{k}", v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def log_validation(self, step: int, row: Mapping[str, Any]) -> None:
        """A validation row (``kind: "validation"``; TensorBoard and W&B under ``val/``, the ``val_``
        prefix dropped)."""
        rec = {"step": step, "kind": VALIDATION, **row}
        self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        scalars = {f"val/{k.removeprefix('val_')}": float(v) for k, v in row.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def plot_rewards(metrics_path: str | os.PathLike[str], out_png: str | os.PathLike[str], title: str = "") -> Path | None:
    """The reward curve (mean reward and mean GBR per step, with the share of improved questions)."""
    rows = [r for r in read_metrics(metrics_path) if r.get("kind", "train") != VALIDATION]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("reward_mean", "mean reward"), ("gbr_mean", "mean GBR"),
                       ("context_acc_mean", "GenAcc of s3 context"), ("reward_share_pos", "share with reward > 0")):
        if all(key in r for r in rows):
            ax.plot(steps, [r[key] for r in rows], marker="o", label=label)
    ax.axhline(0.0, color="grey", lw=0.8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("RL step")
    ax.set_ylabel("value")
    ax.set_title(title or "s3 training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def plot_validation(metrics_path: str | os.PathLike[str], out_png: str | os.PathLike[str],
                    title: str = "") -> Path | None:
    """The validation curve: held-out GBR (with its bootstrap 95 % CI band), s3 GenAcc and naive-RAG
    GenAcc against the RL step whose policy was validated (0 = the initial policy)."""
    rows = [r for r in read_metrics(metrics_path) if r.get("kind") == VALIDATION]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows.sort(key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["val_gbr"] for r in rows], marker="o", label="held-out GBR")
    ax.fill_between(steps, [r["val_gbr_ci95_lo"] for r in rows], [r["val_gbr_ci95_hi"] for r in rows], alpha=0.2,
                    label="GBR 95% CI (bootstrap)")
    ax.plot(steps, [r["val_s3_genacc"] for r in rows], marker="s", label="s3 GenAcc")
    ax.plot(steps, [r["val_naive_genacc"] for r in rows], ls="--", label="naive-RAG GenAcc")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("RL step (policy validated)")
    ax.set_ylabel("value")
    ax.set_title(title or f"s3 validation (n={rows[-1].get('val_n', '?')})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)
    return out
