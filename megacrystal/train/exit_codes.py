"""The exit codes of `megacrystal train` (and of every rank under torchrun), for scripts and Slurm.

0    the run finished (or had nothing left to do)
1    an unexpected error (Python traceback)
2    bad input: the config, the data or a checkpoint (one line naming the field or file)
3    too many non-finite steps in a row (`train.max_skipped_steps`); no checkpoint written from them
4    a step exceeded `train.step_timeout_s` (watchdog; names the step and the rank)
75   stopped by SIGTERM or SIGINT after saving a checkpoint: run the same command again to resume
     (EX_TEMPFAIL of sysexits.h; `examples/slurm.sbatch` requeues the job on it)
130  a second SIGINT: exited at once, without saving
"""

OK = 0
ERROR = 1
BAD_INPUT = 2
NON_FINITE = 3
STALLED = 4
PREEMPTED = 75
INTERRUPTED = 130
