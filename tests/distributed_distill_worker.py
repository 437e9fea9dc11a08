"""`python -m common ARGS...`, stopped right after its checkpoint of step STOP as a crash there would
stop it: a helper of test_distributed_distill.py, run alone or under torchrun.

    python tests/distributed_distill_worker.py STOP distill --checkpoint-every ... --out ...
"""
import sys

from common.cli import main
from common.distill import train

STOP = int(sys.argv[1])
save_checkpoint = train.save_checkpoint


def save_then_stop(directory, student, state):
    save_checkpoint(directory, student, state)
    if state["step"] == STOP:
        raise KeyboardInterrupt


train.save_checkpoint = save_then_stop
sys.exit(main(sys.argv[2:]))
