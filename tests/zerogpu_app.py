"""Launch the real app (app.py) on this CPU box, with ZeroGPU's semantics or without them.

    python tests/zerogpu_app.py --port 7861 --zero-gpu on  --schedule-log /tmp/schedule.jsonl
    python tests/zerogpu_app.py --port 7861 --zero-gpu off

With `--zero-gpu on` this is a ZeroGPU Space as spaces 0.51 runs one: SPACES_ZERO_GPU=true, so every `@spaces.GPU`
function goes through spaces' own `generator_function_wrapper` — a forked worker process, arguments pickled into it,
results pickled back, the worker reused while the scheduler says the GPU is idle, its stop event set when the caller
closes the generator. Only what needs Hugging Face's infrastructure is stubbed:
- the device scheduler's HTTP client (`spaces.zero.client.schedule / allow / release / startup_report`): `schedule`
  grants at once (idle, so the worker is reused) and appends the requested duration to the schedule log;
- the CUDA hand-over (`spaces.zero.torch.patch / unpatch / init / move / pack / size`): there is no CUDA here, so the
  weights stay on the CPU in the worker that inherited them.
Prints "READY <url>" once the app serves.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import signal
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def emulate_zero_gpu(schedule_log: Path | None) -> None:
    os.environ["SPACES_ZERO_GPU"] = "true"
    os.environ.setdefault("SPACES_ZERO_DEVICE_API_URL", "http://127.0.0.1:9/")  # never contacted: client stubbed
    import spaces  # noqa: F401 - imports spaces.zero, which patches torch for its CUDA emulation
    from spaces.zero import client
    from spaces.zero import torch as zero_torch
    from spaces.zero.api import ScheduleResponse

    zero_torch.unpatch()  # no CUDA on this box: undo the emulation, then make the hand-over a no-op
    for name in ("patch", "unpatch", "init", "move", "enter_mode"):
        setattr(zero_torch, name, lambda *args, **kwargs: None)
    zero_torch.pack = zero_torch.size = lambda *args, **kwargs: 0

    def schedule(task_id, request=None, duration=None, gpu_size=None, _first_attempt=True):
        if schedule_log is not None:
            seconds = None if duration is None else duration.total_seconds()
            with open(schedule_log, "a") as log:
                log.write(json.dumps({"task_id": task_id, "duration_s": seconds, "time": time.time()}) + "\n")
        return ScheduleResponse(idle=True, nvidiaIndex=0, nvidiaUUID="cpu-emulation", allowToken=uuid.uuid4().hex)

    client.schedule = schedule
    client.allow = lambda *args, **kwargs: None
    client.release = lambda *args, **kwargs: None
    client.startup_report = lambda *args, **kwargs: None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--zero-gpu", choices=("on", "off"), default="on")
    parser.add_argument("--schedule-log", type=Path)
    args = parser.parse_args()
    if args.zero_gpu == "on":
        emulate_zero_gpu(args.schedule_log)
    sys.path.insert(0, str(REPO))
    app = runpy.run_path(str(REPO / "app.py"), run_name="vdemo_space")  # serve_backends() + build_demo()
    from vdemo.ui import launch_kwargs

    _, url, _ = app["demo"].launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=args.port,
                                   quiet=True, ssr_mode=False, **launch_kwargs())
    print(f"READY {url}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exit cleanly: multiprocessing ends the worker and manager
    parent = os.getppid()
    while os.getppid() == parent:  # the test run that started us ended (even killed): stop serving
        time.sleep(1)


if __name__ == "__main__":
    main()
