"""Scale-out on existing engines (docs/distributed.md).

* :mod:`~codrl.distributed.torch_dist`: data-parallel training with torch.distributed (DDP, FSDP2);
  in one process its objects are plain pass-throughs;
* :mod:`~codrl.distributed.ray_rollout`: lifecycles played by Ray actors;
* :mod:`~codrl.distributed.ray_train`: training processes started as Ray Train workers;
* :mod:`~codrl.distributed.async_rollout`: the next steps' rollouts played while this step trains.

Ray is an optional extra (``pip install 'codrl[ray]'``), imported only when a config asks for it.
"""
