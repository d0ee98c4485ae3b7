"""Autotuning per device (MetaSchedule). One file per job:

- :mod:`.tuner`: the public entry, :func:`~.tuner.tune` and its report (``TuneReport``,
  ``TaskResult``); it also re-exports the public names of the files below
  (``from mcopt.targets.tune.tuner import apply_database`` keeps working);
- :mod:`.scheduler`: the tasks (``tuning_module``, ``extract_tasks``, the records of a task)
  and their order (``CommittingScheduler``: every measured batch committed before the next);
- :mod:`.measure`: measuring candidates: the build-worker pool, ``LocalRunner`` / ``RPCRunner``
  (``make_builder``, ``make_runner``, ``check_tracker``), the template seed record and the
  default-schedule baselines;
- :mod:`.progress`: ``ProgressEvent``, the measure callback that counts trials, the rich bar
  (``RichProgress``) and log lines;
- :mod:`.apply`: a database at build time: ``apply_database``, ``build_with_database``,
  ``database_pass``, ``task_summary`` (``ApplyReport``);
- :mod:`.dbdir`: the database directory: metadata file, ``check_database_dir``,
  ``open_database``, ``merge_databases``, ``host_device``;
- :mod:`.db`: the database's line format and its validation/repair;
- :mod:`.space`: the schedule search space (kernel templates, tensor intrinsics, build pool);
- :mod:`.rpc`: remote devices over TVM RPC (``run_remote``, local tracker/server).
"""
