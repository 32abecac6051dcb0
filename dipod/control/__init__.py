"""Flow policies for continuous control: policy and critic, environments, the RL trainer, self-distillation."""
