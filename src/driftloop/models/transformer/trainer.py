"""Fine-tuning: the whole encoder and a linear head, trained with a plain PyTorch loop.

AdamW with linear warm-up and decay (:mod:`.schedule`), early stopping on the validation rows,
an optional time limit (:mod:`.budget`), resumable checkpoints (:mod:`.checkpoint`), mixed
precision on a GPU. The head may start from a linear probe's weights. The loop's state lives in
a :class:`Trainer`; :meth:`Trainer.run` returns a :class:`FinetuneResult`. Progress (step, loss,
ETA) goes to the ``say`` callback.

Imports torch at module level: the family imports this module when it fine-tunes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from driftloop.config.transformer import TransformerParams
from driftloop.models.base import fit_temperature
from driftloop.models.transformer.budget import Clock, TimeBudget, format_eta, loop_seconds
from driftloop.models.transformer.checkpoint import Checkpointer, TrainingInterrupted
from driftloop.models.transformer.data import TrainingData
from driftloop.models.transformer.encoder import IntentNet, autocast, autocast_dtype, pick_device
from driftloop.models.transformer.schedule import lr_factor, schedule_progress


@dataclass
class LoopState:
    """The loop's counters, saved in every checkpoint with the weights and the optimizer."""

    step: int = 0
    best_score: float = -1.0  # the best validation accuracy so far; -1: not evaluated yet
    bad_evals: int = 0  # evaluations in a row without improvement
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class FinetuneResult:
    """A finished fine-tuning run: the best weights (encoder on the cpu, head as arrays), the
    temperature calibrated on the validation rows, and how the run went."""

    encoder: Any
    weight: np.ndarray
    bias: np.ndarray
    temperature: float
    steps: int
    total_steps: int
    resumed_from: int
    stop: str
    best_val_accuracy: float
    history: list[dict[str, Any]]

    def info(self) -> dict[str, Any]:
        """How the run went, for the model's ``info`` (logged as params)."""
        return {
            "steps": self.steps,
            "total_steps": self.total_steps,
            "resumed_from": self.resumed_from,
            "stop": self.stop,
            "best_val_accuracy": round(self.best_val_accuracy, 4),
            "history": self.history,
        }


class Trainer:
    """One fine-tuning run of ``encoder`` on ``data``.

    ``head``: the starting weight and bias of the head (a linear probe's), or None for a randomly
    initialised one. ``checkpointer``: where to save and resume from, or None. ``fit_started``: the
    ``clock`` reading when the whole fit started (``max_minutes`` counts from there).
    """

    def __init__(
        self,
        encoder: Any,
        tokenizer: Any,
        data: TrainingData,
        params: TransformerParams,
        *,
        pooling: str,
        seed: int,
        say: Callable[[str], None],
        checkpointer: Checkpointer | None,
        head: tuple[np.ndarray, np.ndarray] | None,
        fit_started: float,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.p, self.data, self.tokenizer, self.seed, self.say = params, data, tokenizer, seed, say
        self.checkpointer, self.fit_started, self.clock = checkpointer, fit_started, clock
        self.device = pick_device(params.device)
        self.amp_dtype = autocast_dtype(self.device)
        self.net = IntentNet(encoder, len(data.labels), params.dropout, pooling)
        if head is not None:
            self.net.init_head(*head)
        self.net.to(self.device)
        self.train_rows, self.val_rows = data.train_rows, data.val_rows
        self.steps_per_epoch = math.ceil(len(self.train_rows) / params.batch_size)
        self.total = params.epochs * self.steps_per_epoch
        if params.max_steps:
            self.total = min(self.total, params.max_steps)
        self.eval_every = params.eval_every_steps or self.steps_per_epoch
        self.optimizer = self._optimizer()
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.state = LoopState()
        self.resumed_from = 0
        self.best_weights: dict[str, Any] | None = None
        self.loss: float | None = None  # the running (smoothed) training loss
        self.budget = TimeBudget(0.0, clock=clock)

    def _optimizer(self) -> torch.optim.AdamW:
        """AdamW with two groups: the encoder at ``learning_rate``, the head at ``head_learning_rate``."""
        head = list(self.net.head.parameters())
        body = [q for n, q in self.net.named_parameters() if not n.startswith("head.")]
        return torch.optim.AdamW(
            [{"params": body, "lr": self.p.learning_rate}, {"params": head, "lr": self.p.head_learning_rate}],
            weight_decay=self.p.weight_decay,
        )

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> FinetuneResult:
        """Resume or start, train until the steps, the patience or the time run out, then restore
        the best weights and calibrate the temperature. Raises :class:`TrainingInterrupted` from the
        ``stop_after_steps`` hook."""
        time_done = self._resume()
        eval_s = self._first_validation()
        # The loop's share of max_minutes: what is left after embedding and the probe, less the
        # closing validation and calibration passes.
        spent_s = self.clock() - self.fit_started
        self.budget = TimeBudget(loop_seconds(self.p.max_minutes, spent_s, 3 * eval_s + 5), time_done, self.clock)
        if self.p.max_minutes:
            self.say(f"time limit {self.p.max_minutes:g} min: {self.budget.seconds / 60:.1f} min of fine-tuning left")
        self.say(
            f"fine-tuning {sum(q.numel() for q in self.net.parameters()) / 1e6:.1f}M parameters for {self.total} "
            f"steps ({self.p.epochs} epochs of {self.steps_per_epoch}, batch {self.p.batch_size}) on {self.device}"
            + (f" with {str(self.amp_dtype).removeprefix('torch.')} autocast" if self.amp_dtype else "")
        )
        self.net.train()
        self.budget.start()
        step_at_start = self.state.step
        stop = self._loop(step_at_start)
        self.say(
            f"{stop}: {self.state.step - step_at_start} steps in {self.budget.elapsed():.0f}s, "
            f"best validation accuracy {self.state.best_score:.4f}"
        )
        return self._finish(stop)

    def _resume(self) -> float:
        """Load the checkpoint and the best weights, if any; the fraction of the time budget the
        earlier runs spent."""
        if self.checkpointer is None:
            return 0.0
        saved = self.checkpointer.load_latest(self.device)
        if saved is not None:
            self.net.load_state_dict(saved["net"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.state = LoopState(saved["step"], saved["best_score"], saved["bad_evals"], saved["history"])
            self.resumed_from = self.state.step
            self.say(f"resuming from step {self.state.step}/{self.total} (checkpoint {self.checkpointer.folder})")
        self.best_weights = self.checkpointer.load_best()
        return float(saved.get("time_done", 0.0)) if saved is not None else 0.0

    def _first_validation(self) -> float:
        """A fresh run's validation before any step (the starting point to beat); its seconds."""
        if not len(self.val_rows) or self.state.best_score >= 0:
            return 0.0
        started = self.clock()
        score, _ = self._evaluate()
        eval_s = self.clock() - started
        self.state.best_score = score
        self.state.history.append({"step": 0, "val_accuracy": round(score, 4)})
        self._remember_best()
        self.say(f"step 0/{self.total}: validation accuracy {score:.4f} (before fine-tuning)")
        return eval_s

    def _loop(self, step_at_start: int) -> str:
        """Train step by step; the reason the loop ended."""
        while self.state.step < self.total:
            epoch = self._train_step()
            self._log(epoch, step_at_start)
            stop = self._after_step(step_at_start)
            if stop is not None:
                return stop
        return "finished"

    def _finish(self, stop: str) -> FinetuneResult:
        """Restore the best weights, calibrate, move to the cpu, drop a finished run's checkpoint."""
        if self.best_weights is not None:
            self.net.load_state_dict(self.best_weights)
        temperature = 1.0
        if len(self.val_rows):
            _, logits = self._evaluate()
            temperature = fit_temperature(logits.astype(np.float64), self.data.y[self.val_rows])
        self.net.eval().to("cpu")
        weight, bias = self.net.head_arrays()
        result = FinetuneResult(
            encoder=self.net.encoder,
            weight=weight,
            bias=bias,
            temperature=temperature,
            steps=self.state.step,
            total_steps=self.total,
            resumed_from=self.resumed_from,
            stop=stop,
            best_val_accuracy=self.state.best_score,
            history=self.state.history,
        )
        if self.checkpointer is not None and not self.p.keep_checkpoint:
            self.checkpointer.remove()
        return result

    # -- one step -----------------------------------------------------------------------------------
    def _train_step(self) -> int:
        """Set the rate, train on the step's batch, count the step; the batch's epoch."""
        step, size = self.state.step, self.p.batch_size
        progress = schedule_progress(step, self.total, self.budget.fraction())
        factor = lr_factor(progress, self.total, self.p.warmup_fraction)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * factor
        epoch, offset = divmod(step, self.steps_per_epoch)
        # The order of an epoch depends only on the seed and the epoch: a resumed run skips
        # exactly the batches the interrupted one trained on.
        order = np.random.default_rng(self.seed + epoch).permutation(self.train_rows)
        value = self._optimize(order[offset * size : (offset + 1) * size])
        self.state.step += 1
        self.loss = value if self.loss is None else 0.9 * self.loss + 0.1 * value
        return epoch

    def _optimize(self, rows: np.ndarray) -> float:
        """One forward and backward pass and optimizer step on ``rows``; the batch's loss."""
        batch = self._tokenize(rows)
        target = torch.as_tensor(self.data.y[rows], device=self.device)
        with autocast(self.device, self.amp_dtype):
            logits = self.net(batch["input_ids"], batch["attention_mask"]).float()
            loss = nn.functional.cross_entropy(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            self.optimizer.step()
        return float(loss.detach())

    def _log(self, epoch: int, step_at_start: int) -> None:
        """Every ``log_every_steps`` and at the last step: step, loss, rate, speed and ETA."""
        step = self.state.step
        if step % self.p.log_every_steps != 0 and step != self.total:
            return
        per_step = self.budget.elapsed() / (step - step_at_start)
        eta = self.budget.cap_eta(per_step * (self.total - step))
        self.say(
            f"step {step}/{self.total} epoch {epoch + 1}/{self.p.epochs} loss {self.loss:.4f} "
            f"lr {self.optimizer.param_groups[0]['lr']:.2e} {per_step:.2f}s/step ETA {format_eta(eta)}"
        )

    def _after_step(self, step_at_start: int) -> str | None:
        """Validate, checkpoint and apply the stopping rules after a step; why to stop, or None."""
        p, step, validating = self.p, self.state.step, len(self.val_rows) > 0
        if validating and (step % self.eval_every == 0 or step == self.total):
            self._validate()
            if self.state.bad_evals >= p.patience:
                self._save_latest()
                return f"early stop at step {step}"
        if step % p.checkpoint_every_steps == 0:
            self._save_latest()
        if p.stop_after_steps and step - step_at_start >= p.stop_after_steps and step < self.total:
            self._save_latest()
            folder = self.checkpointer.folder if self.checkpointer is not None else None
            raise TrainingInterrupted(f"stopped after {step} steps (stop_after_steps hook); checkpoint in {folder}")
        if self.budget.exhausted():
            if validating and self.state.history[-1]["step"] != step:
                self._validate()  # the steps since the last evaluation count too
            self._save_latest()
            return f"time limit ({p.max_minutes:g} min) at step {step}"
        return None

    # -- validation and checkpoints -------------------------------------------------------------------
    def _tokenize(self, rows: np.ndarray) -> Any:
        """The texts of ``rows`` as a padded, truncated batch on the device."""
        return self.tokenizer(
            [self.data.texts[i] for i in rows],
            padding=True,
            truncation=True,
            max_length=self.p.max_length,
            return_tensors="pt",
        ).to(self.device)

    def _evaluate(self) -> tuple[float, np.ndarray]:
        """Accuracy and logits on the validation rows (in length order, in inference batches)."""
        self.net.eval()
        logits = np.zeros((len(self.val_rows), len(self.data.labels)), dtype=np.float32)
        order = self.val_rows[np.argsort([len(self.data.texts[i]) for i in self.val_rows], kind="stable")]
        position = {r: i for i, r in enumerate(self.val_rows)}
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            for start in range(0, len(order), self.p.predict_batch_size):
                rows = order[start : start + self.p.predict_batch_size]
                batch = self._tokenize(rows)
                out = self.net(batch["input_ids"], batch["attention_mask"]).float().cpu().numpy()
                logits[[position[r] for r in rows]] = out
        self.net.train()
        return float((logits.argmax(1) == self.data.y[self.val_rows]).mean()), logits

    def _validate(self) -> None:
        """Evaluate, record it in the history, keep the weights if they are the best so far."""
        score, _ = self._evaluate()
        s = self.state
        s.history.append({"step": s.step, "val_accuracy": round(score, 4), "loss": round(self.loss or 0.0, 4)})
        if score > s.best_score:
            s.best_score, s.bad_evals = score, 0
            self._remember_best()
        else:
            s.bad_evals += 1
        self.say(
            f"step {s.step}: validation accuracy {score:.4f} (best {s.best_score:.4f}, "
            f"{s.bad_evals}/{self.p.patience} without improvement)"
        )

    def _remember_best(self) -> None:
        """Keep a cpu copy of the current weights as the best, and save it when checkpointing."""
        self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.net.state_dict().items()}
        if self.checkpointer is not None:
            self.checkpointer.save_best(self.best_weights)

    def _save_latest(self) -> None:
        """Save the network, the optimizer and the counters (nothing without a checkpointer)."""
        if self.checkpointer is None:
            return
        self.checkpointer.save_latest(
            {
                "net": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "time_done": self.budget.fraction(),
                "step": self.state.step,
                "best_score": self.state.best_score,
                "bad_evals": self.state.bad_evals,
                "history": self.state.history,
            }
        )
