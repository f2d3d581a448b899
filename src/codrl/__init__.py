"""codrl: train and evaluate LLM agents on the Connect-the-Dots (CoD) capability.

The data path follows the package layout::

    envs/  (worlds, tasks, packs) -> rollout/ (lifecycle runner, experiences)
    -> algo/ (advantages, losses) -> train/ (trainer, checkpoints) -> eval/ (metrics, reports)

with ``backends/`` for model engines and ``cli.py`` on top.
"""

__version__ = "0.1.0"
