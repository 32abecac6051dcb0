"""Flow policies for continuous control: policy and critic, environments, the RL trainer, self-distillation.

- ``policy``: ``FlowPolicy`` (velocity field + Euler sampler, CFM losses, exact Euler log-likelihood),
  ``GaussianPolicy`` (the PPO baseline), ``Critic``.
- ``normalizer``: running observation normalisation (Welford), saved with the trainer's state.
- ``envs``: gymnasium vector envs with same-step autoreset and env snapshots; the multimodal bandit.
- ``trainer``: ``ControlTrainer`` (rollout, GAE, FPO / FPO++ / Gaussian PPO updates, DiPOD term, drift probe).
- ``self_distill``: the pre-RL stage that fits a frozen copy's own samples.
- ``probe``: the drift probe (weighted-free CFM surrogate vs exact Euler log-likelihood, gradient cosine).
- ``demos``, ``experts``, ``bc``: demonstrations in Minari's format, experts from run checkpoints, behaviour
  cloning of flow policies and the loader that starts RL from a clone.
"""
