"""On-policy trainer for flow policies (FPO, FPO++, + DiPOD) and the Gaussian PPO baseline.

One ``train_step`` reads top to bottom like rsl_rl's runner: rollout under ``torch.inference_mode()``
-> old CFM losses on stored (tau, eps) draws -> GAE with the critic -> update epochs x minibatches
-> metrics. The formulas live in ``dipod.bounds``, ``dipod.objectives`` and ``dipod.advantages``.

Shape legend: T rollout steps, E envs, B = T * E transitions, N (tau, eps) draws, A action dim, S obs dim.
"""

from __future__ import annotations

import copy
import math
import time
from collections import deque

import numpy as np
import torch

from dipod.advantages import gae
from dipod.checkpoints import CheckpointError
from dipod.control.bc import actor_kwargs, load_pretrained_actor
from dipod.control.config import ControlRunConfig
from dipod.control.envs import (
    check_env,
    env_seeds,
    final_observations,
    make_vector_env,
    restore_vector_env,
    snapshot_vector_env,
)
from dipod.control.normalizer import RunningNorm
from dipod.control.policy import Critic, FlowPolicy, GaussianPolicy, Policy
from dipod.control.probe import bound_gap, control_drift_probe
from dipod.control.self_distill import self_distill
from dipod.objectives import dipod_term, get_objective
from dipod.objectives.dipod import advantage_scale
from dipod.optim import clip_and_step, loss_is_finite
from dipod.seeding import torch_generator
from dipod.types import LossOut

RETURN_WINDOW = 20
"""Finished episodes averaged into ``episode_return``."""


class ControlTrainer:
    """Rollout, GAE and clipped-surrogate updates for a flow (or Gaussian) policy in gymnasium vector envs."""

    def __init__(self, cfg: ControlRunConfig, *, device: str | None = None) -> None:
        self.cfg = cfg
        self.cc = cc = cfg.control
        self.device = torch.device(device or cfg.train.device)
        self.step = 0
        self.samples = 0
        self.dipod_beta = cfg.objective.dipod_beta
        # Separate streams, so e.g. evaluation or the drift probe never shift the training noise.
        self.gen_rollout = torch_generator(cfg.seed, "rollout", device=self.device)  # action noise, (tau, eps) draws
        self.gen_update = torch_generator(cfg.seed, "update")  # minibatch permutations
        self.gen_probe = torch_generator(cfg.seed, "probe", device=self.device)  # drift probe
        init_gen = torch_generator(cfg.seed, "init")  # weight init

        check_env(cc.env)
        self.envs = make_vector_env(cc.env, cc.num_envs, mode=cc.vector_mode, **cc.env_kwargs)
        obs, _ = self.envs.reset(seed=env_seeds(cfg.seed, cc.num_envs, "env"))
        self._obs = np.asarray(obs, dtype=np.float32)  # (E, S) current observations
        obs_space, act_space = self.envs.single_observation_space, self.envs.single_action_space
        self.obs_dim, self.action_dim = int(np.prod(obs_space.shape)), int(np.prod(act_space.shape))
        self.action_low = torch.as_tensor(act_space.low, dtype=torch.float32, device=self.device)
        self.action_high = torch.as_tensor(act_space.high, dtype=torch.float32, device=self.device)

        self.normalizer = RunningNorm(self.obs_dim).to(self.device)
        self.objective = get_objective("control", cfg.objective.name)
        if cc.policy == "flow":
            self.actor: Policy = FlowPolicy(self.obs_dim, self.action_dim, **actor_kwargs(cc), generator=init_gen)
        else:
            self.actor = GaussianPolicy(
                self.obs_dim,
                self.action_dim,
                hidden=cc.actor_hidden,
                activation=cc.activation,
                init_log_std=cc.init_log_std,
                generator=init_gen,
            )
        self.actor.to(self.device)
        if cc.init_from is not None:
            self._start_from_clone(cc.init_from)
        self.critic = Critic(self.obs_dim, hidden=cc.critic_hidden, activation=cc.activation, generator=init_gen)
        self.critic.to(self.device)
        self.optimizer = self._make_optimizer()

        self._ep_return = np.zeros(cc.num_envs)  # running undiscounted return of each env's episode
        self._ep_length = np.zeros(cc.num_envs, dtype=np.int64)
        self._finished: deque[tuple[float, int]] = deque(maxlen=RETURN_WINDOW)
        self._self_distill_done = cc.self_distill_iterations == 0  # the config allows it for flow policies only
        self._last_batch: dict[str, torch.Tensor] | None = None  # for the drift probe
        self._noise_keys: tuple[str, ...] = ()  # what the actor's draw_noise stores per transition
        self._dipod_factor = 1.0  # what dipod_scale multiplies beta by for the current rollout
        self.self_distill_time_s = 0.0

    # ------------------------------------------------------------------ construction helpers

    def _start_from_clone(self, path: str) -> None:
        """Take the actor and the observation normaliser of a BC checkpoint (``dipod sft`` of a control config);
        one from another env, of other sizes or another architecture is refused, naming the file."""
        try:
            pre = load_pretrained_actor(
                path, self.obs_dim, self.action_dim, expected_env=self.cc.env, control=self.cc, device=self.device
            )
        except CheckpointError as exc:
            raise ValueError(f"control.init_from = {path!r}: {exc}") from None
        self.actor = pre.actor.train(False)
        if pre.normalizer is not None:
            self.normalizer.load_state_dict(pre.normalizer.state_dict())

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        groups = [
            {"params": list(self.actor.parameters()), "lr": o.lr},
            {"params": list(self.critic.parameters()), "lr": self.cc.critic_lr or o.lr},
        ]
        return torch.optim.AdamW(groups, betas=o.betas, weight_decay=o.weight_decay)

    def _parameters(self) -> list[torch.nn.Parameter]:
        return [*self.actor.parameters(), *self.critic.parameters()]

    # ------------------------------------------------------------------ env interaction

    def _normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return self.normalizer(obs) if self.cc.normalize_obs else obs

    def _observe(self) -> torch.Tensor:
        """(E, S) current observations, normalised after folding them into the running statistics."""
        obs = torch.as_tensor(self._obs, device=self.device)
        if self.cc.normalize_obs:
            self.normalizer.update(obs)
        return self._normalize(obs)

    def _env_step(self, actions: torch.Tensor) -> tuple[np.ndarray, ...]:
        """Step every env with actions clipped to the action space; track episode returns.

        Returns rewards (E,), terminated (E,), truncated (E,) and the observations reached (E, S),
        i.e. the final observation where an episode ended (same-step autoreset put the reset
        observation into ``self._obs``).
        """
        clipped = torch.maximum(torch.minimum(actions, self.action_high), self.action_low)
        next_obs, rewards, terminated, truncated, infos = self.envs.step(clipped.cpu().numpy())
        reached = final_observations(next_obs, infos).astype(np.float32)
        self._obs = np.asarray(next_obs, dtype=np.float32)
        rewards = np.asarray(rewards, dtype=np.float64)
        self._ep_return += rewards
        self._ep_length += 1
        ended = np.asarray(terminated | truncated, dtype=bool)  # (E,)
        if ended.any():
            self._finished.extend(zip(self._ep_return[ended].tolist(), self._ep_length[ended].tolist(), strict=True))
            self._ep_return[ended], self._ep_length[ended] = 0.0, 0
        self.samples += self.cc.num_envs
        return rewards, terminated, truncated, reached

    # ------------------------------------------------------------------ rollout

    def _rollout(self) -> dict[str, torch.Tensor]:
        """T steps in E envs under inference mode; returns (T, E, ...) tensors (normal, autograd-usable)."""
        cc, dev = self.cc, self.device
        buf: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "actions", "rewards", "values", "next_values")}
        buf.update({"terminated": [], "truncated": [], "raw_rewards": []})
        with torch.inference_mode():
            for _ in range(cc.rollout_steps):
                obs = self._observe()  # (E, S)
                actions = self.actor.sample(obs, self.gen_rollout)  # (E, A)
                rewards, terminated, truncated, reached = self._env_step(actions)
                reached_obs = self._normalize(torch.as_tensor(reached, device=dev))
                buf["obs"].append(obs)
                buf["actions"].append(actions)
                buf["values"].append(self.critic(obs))
                buf["next_values"].append(self.critic(reached_obs))
                buf["raw_rewards"].append(torch.as_tensor(rewards, dtype=torch.float32, device=dev))
                buf["rewards"].append(buf["raw_rewards"][-1] * cc.reward_scale)
                buf["terminated"].append(torch.as_tensor(terminated, device=dev))
                buf["truncated"].append(torch.as_tensor(truncated, device=dev))
        # Clone out of inference mode so the update can build graphs on these tensors.
        return {k: torch.stack(v).clone() for k, v in buf.items()}

    # ------------------------------------------------------------------ self-distillation

    def _collect_teacher(self, teacher: FlowPolicy) -> tuple[torch.Tensor, torch.Tensor]:
        obs_list, act_list = [], []
        with torch.inference_mode():
            for _ in range(self.cc.self_distill_rollout_steps):
                obs = self._observe()
                actions = teacher.sample(obs, self.gen_rollout)
                self._env_step(actions)
                obs_list.append(obs)
                act_list.append(actions)
        return torch.cat(obs_list).clone(), torch.cat(act_list).clone()

    def _run_self_distill(self) -> dict[str, float]:
        """The stage, with the bound's gap on the policy's own samples before it (the teacher's first batch) and
        after it (fresh student actions at the same observations): ``self_distill/gap_{before,after}``."""
        cc = self.cc
        start = time.perf_counter()
        gaps: dict[str, dict[str, float]] = {}
        probe_obs: list[torch.Tensor] = []

        def collect(teacher: FlowPolicy) -> tuple[torch.Tensor, torch.Tensor]:
            obs, actions = self._collect_teacher(teacher)
            if not probe_obs:  # the student still equals the teacher
                probe_obs.append(obs)
                gaps["before"] = self._own_sample_gap(obs, actions)
            return obs, actions

        stats = self_distill(
            self.actor,
            collect,
            iterations=cc.self_distill_iterations,
            batch_size=cc.self_distill_batch_size,
            lr=cc.self_distill_lr,
            num_draws=cc.self_distill_draws,
            generator=self.gen_rollout,
            max_grad_norm=self.cfg.optim.max_grad_norm,
            weight_decay=self.cfg.optim.weight_decay,
            buffer_floor=cc.num_envs * cc.self_distill_rollout_steps * 8,
        )
        with torch.inference_mode():
            own = self.actor.sample(probe_obs[0], self.gen_probe).clone()
        gaps["after"] = self._own_sample_gap(probe_obs[0], own)
        self.optimizer = self._make_optimizer()  # fresh optimiser for RL, as in the reference
        self._self_distill_done = True
        self.self_distill_time_s = time.perf_counter() - start
        return {**stats, "self_distill/seconds": self.self_distill_time_s,
                **{f"self_distill/{key}_{when}": value for when, measured in gaps.items()
                   for key, value in measured.items()}}  # fmt: skip

    def _own_sample_gap(self, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, float]:
        """``bound_gap`` of (obs, actions) (B, S), (B, A): log-likelihood, weighted ELBO, gap, invertible share."""
        return bound_gap(self.actor, obs, actions, max(self.cc.cfm_draws, 8), self.gen_probe)

    # ------------------------------------------------------------------ one policy-improvement step

    def train_step(self) -> dict[str, float]:
        """Rollout, GAE, then update_epochs x num_minibatches clipped-surrogate updates."""
        cc = self.cc
        extra: dict[str, float] = {}
        if not self._self_distill_done:
            extra.update(self._run_self_distill())

        started = time.perf_counter()
        roll = self._rollout()
        rolled = time.perf_counter()
        advantages, returns = gae(
            roll["rewards"],
            roll["values"],
            roll["next_values"],
            roll["terminated"],
            roll["truncated"],
            gamma=cc.gamma,
            lam=cc.gae_lambda,
        )
        batch = {
            "obs": roll["obs"].flatten(0, 1),  # (B, S)
            "actions": roll["actions"].flatten(0, 1),  # (B, A)
            "adv": advantages.flatten(),  # (B,)
            "returns": returns.flatten(),
        }
        size = batch["obs"].shape[0]
        mb_size = size // cc.num_minibatches
        perms = [torch.randperm(size, generator=self.gen_update).to(self.device) for _ in range(cc.update_epochs)]
        self._store_old(batch, perms[0], mb_size)
        if cc.adv_norm == "batch":
            batch["adv"] = self._normalize_adv(batch["adv"])
        # dipod_scale 'normalized': beta relative to the PG term, whose per-sample weights have size mean |A|
        normalized = self.cfg.objective.dipod_scale == "normalized"
        scaled_adv = self._normalize_adv(batch["adv"]) if cc.adv_norm == "minibatch" else batch["adv"]
        self._dipod_factor = float(advantage_scale(scaled_adv)) if normalized else 1.0

        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        skipped = 0
        ratio_first = float("nan")
        for perm in perms:
            for start in range(0, size, mb_size):
                rows = perm[start : start + mb_size]
                out, value_loss = self._losses({k: v[rows] for k, v in batch.items()})
                loss = out.loss + cc.value_coef * value_loss
                if math.isnan(ratio_first):
                    ratio_first = float(out.stats["ratio_mean"])
                if not loss_is_finite(loss):
                    skipped += 1
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                applied, grad_norm = clip_and_step(self.optimizer, self._parameters(), self.cfg.optim.max_grad_norm)
                skipped += int(not applied)
                row = {**{k: float(v) for k, v in out.stats.items()}, "loss": float(loss.detach())}
                row.update(value_loss=float(value_loss.detach()), grad_norm=grad_norm)
                for k, v in row.items():
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1

        self.step += 1
        self._last_batch = {k: batch[k] for k in ("obs", "actions", "adv")}
        metrics = {k: sums[k] / counts[k] for k in sums}
        metrics.setdefault("dipod_reg", 0.0)
        metrics.update(extra)
        metrics.update(
            reward_mean=float(roll["raw_rewards"].mean()),
            skipped_updates=float(skipped),
            updates=float(len(perms) * cc.num_minibatches),
            **{"time/env": rolled - started, "time/update": time.perf_counter() - rolled},
            ratio_first=ratio_first,
            value_mean=float(roll["values"].mean()),
        )
        if self._finished:
            metrics["episode_return"] = float(np.mean([r for r, _ in self._finished]))
            metrics["episode_length"] = float(np.mean([n for _, n in self._finished]))
        return metrics

    def _store_old(self, batch: dict[str, torch.Tensor], perm: torch.Tensor, mb_size: int) -> None:
        """Per-transition (tau, eps) draws and the rollout policy's scores on them, reused in every epoch.

        The scores are computed in the first epoch's minibatch layout, so the first minibatch's
        forward pass repeats them bit for bit and rho == 1 exactly before the first update.
        """
        size = batch["obs"].shape[0]
        noise = self.actor.draw_noise(size, self.cc.cfm_draws, self.gen_rollout)  # flow: tau (B, N), eps (B, N, A)
        batch.update(noise)
        self._noise_keys = tuple(noise)
        old = torch.empty(0)
        with torch.no_grad():
            for start in range(0, size, mb_size):
                rows = perm[start : start + mb_size]
                score = self.actor.score(
                    batch["obs"][rows], batch["actions"][rows], {k: batch[k][rows] for k in noise}
                )  # (mb, N) CFM losses or (mb,) log-probs
                if old.numel() == 0:
                    old = torch.empty((size, *score.shape[1:]), device=self.device)
                old[rows] = score
        batch["old"] = old

    def _normalize_adv(self, adv: torch.Tensor) -> torch.Tensor:
        if adv.numel() < 2:
            return adv
        normed = (adv - adv.mean()) / (adv.std() + 1e-8)
        return normed.clamp(-self.cc.adv_clamp, self.cc.adv_clamp)

    def _losses(self, mb: dict[str, torch.Tensor]) -> tuple[LossOut, torch.Tensor]:
        """Policy objective (+ DiPOD term) and value loss on one minibatch."""
        adv = self._normalize_adv(mb["adv"]) if self.cc.adv_norm == "minibatch" else mb["adv"]
        new = self.actor.score(mb["obs"], mb["actions"], {k: mb[k] for k in self._noise_keys})
        out = self.objective.fn(new, mb["old"], adv, self.cfg.objective)
        if self.step < self.cc.critic_warmup_iterations:  # DPPO's critic warm-up: the critic fits, the actor gets
            out = LossOut(out.loss.detach() * 0.0, out.stats, out.elbo)  # no gradient at all (AdamW skips it)
        elif self.dipod_beta > 0:  # the config allows it only for objectives with an ELBO (out.elbo)
            out = out + dipod_term(out.elbo, self.dipod_beta * self._dipod_factor)
        value_loss = 0.5 * (self.critic(mb["obs"]) - mb["returns"]).pow(2).mean()
        return out, value_loss

    # ------------------------------------------------------------------ evaluation and diagnostics

    def evaluate(self) -> dict[str, float]:
        """Mean return of ``eval_episodes`` fresh episodes (separate envs and noise; training state untouched)."""
        cc = self.cc
        envs = make_vector_env(cc.env, cc.eval_episodes, mode="sync", **cc.env_kwargs)
        gen = torch_generator(self.cfg.seed, "eval", device=self.device)
        obs, _ = envs.reset(seed=env_seeds(self.cfg.seed, cc.eval_episodes, "eval_env"))
        returns = np.zeros(cc.eval_episodes)
        lengths = np.zeros(cc.eval_episodes)
        active = np.ones(cc.eval_episodes, dtype=bool)
        with torch.inference_mode():
            while active.any():
                norm_obs = self._normalize(torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device))
                actions = self.actor.sample(norm_obs, gen)
                clipped = torch.maximum(torch.minimum(actions, self.action_high), self.action_low)
                obs, rewards, terminated, truncated, _ = envs.step(clipped.cpu().numpy())
                returns += np.where(active, rewards, 0.0)
                lengths += active
                active &= ~(terminated | truncated)
        envs.close()
        return {"eval/return": float(returns.mean()), "eval/length": float(lengths.mean())}

    def drift_probe(self) -> dict[str, float]:
        """ELBO, exact Euler log-likelihood, their gap, and the proxy-vs-true policy-gradient cosine.

        Probe batch: ``drift.probe_size`` transitions of the latest rollout (actions sampled by the
        policy, with their normalised advantages); the metrics come from ``control_drift_probe``, in
        the flow's scaled action units.
        """
        if self._last_batch is None:
            # A rollout here would advance the envs, generators and normaliser, i.e. change training.
            raise RuntimeError("drift_probe needs a rollout: call train_step first")
        b = self._last_batch
        size = min(self.cfg.drift.probe_size, b["obs"].shape[0])
        rows = torch.randperm(b["obs"].shape[0], generator=self.gen_probe, device=self.gen_probe.device)[:size]
        rows = rows.to(self.device)
        obs, actions = b["obs"][rows], b["actions"][rows]
        adv = self._normalize_adv(b["adv"][rows])
        return control_drift_probe(self.actor, obs, actions, adv, self.cfg.objective, self.cc.cfm_draws, self.gen_probe)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit, env state included."""
        return {
            "step": self.step,
            "samples": self.samples,
            "actor": copy.deepcopy(self.actor.state_dict()),
            "critic": copy.deepcopy(self.critic.state_dict()),
            "normalizer": copy.deepcopy(self.normalizer.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generators": {
                "rollout": self.gen_rollout.get_state(),
                "update": self.gen_update.get_state(),
                "probe": self.gen_probe.get_state(),
            },
            "envs": snapshot_vector_env(self.envs),
            # Tensors, bytes and plain Python only, so torch.load(..., weights_only=True) reads it back.
            "obs": torch.from_numpy(self._obs.copy()),
            "ep_return": torch.from_numpy(self._ep_return.copy()),
            "ep_length": torch.from_numpy(self._ep_length.copy()),
            "finished": list(self._finished),
            "self_distill_done": self._self_distill_done,
            "last_batch": None if self._last_batch is None else {k: v.clone() for k, v in self._last_batch.items()},
        }

    def load_state_dict(self, state: dict, *, restore_envs: bool = True) -> None:
        """Restore a ``state_dict``; the trainer must have been built from the same config.

        ``restore_envs=False`` leaves the training envs, their current observations and running
        episode counters as built: for evaluation, which uses envs of its own (so e.g. a different
        ``control.num_envs`` does not matter). Training on from there is not bit for bit.
        """
        self.step, self.samples = int(state["step"]), int(state["samples"])
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen_rollout.set_state(state["generators"]["rollout"])
        self.gen_update.set_state(state["generators"]["update"])
        self.gen_probe.set_state(state["generators"]["probe"])
        if restore_envs:
            restore_vector_env(self.envs, state["envs"])
            self._obs = state["obs"].numpy().astype(np.float32)
            self._ep_return = state["ep_return"].numpy().astype(np.float64)
            self._ep_length = state["ep_length"].numpy().astype(np.int64)
        self._finished = deque((tuple(x) for x in state["finished"]), maxlen=RETURN_WINDOW)
        self._self_distill_done = bool(state["self_distill_done"])
        last = state.get("last_batch")
        self._last_batch = None if last is None else {k: v.to(self.device) for k, v in last.items()}

    def set_dipod_beta(self, beta: float) -> None:
        """DiPOD's weight for the following updates (the run loop's adaptive beta)."""
        self.dipod_beta = beta

    def close(self) -> None:
        """Close the vector env (async envs hold worker processes)."""
        self.envs.close()
