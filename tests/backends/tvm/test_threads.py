"""TVM's CPU thread pool defaults to half the logical cores; lowbit's TVM backend sets
TVM_NUM_THREADS to the cores this process may use unless the user chose a number."""

import os
import subprocess
import sys

CODE = "import os, lowbit.backends.tvm; print(os.environ.get('TVM_NUM_THREADS'))"


def _run(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_default_is_every_available_core():
    assert _run({}) == str(len(os.sched_getaffinity(0)))


def test_user_choice_is_kept():
    assert _run({"TVM_NUM_THREADS": "1"}) == "1"
    assert _run({"OMP_NUM_THREADS": "1"}) == "None"     # TVM reads OMP_NUM_THREADS itself
