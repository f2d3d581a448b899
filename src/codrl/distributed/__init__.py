"""Scale-out on existing engines: Ray rollout workers, torch.distributed training, asynchronous steps.

Nothing here is imported by the single-process path; Ray is an optional extra (``codrl[ray]``).
"""
