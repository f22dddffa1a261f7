"""Runs the scripted pipeline of tests/test_pipeline.py in its own process, for the SIGKILL resume tests.

    python -m tests.resume_driver CONFIG_JSON CALL_LOG [--kill-at-call N] [--call-delay S]

Every engine call appends a line to CALL_LOG (so the parent counts what was paid for, across processes);
`--kill-at-call N` sends SIGKILL to this process at the N-th engine call of this run.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from fineinstructions.backends.fake import FakeBackend
from fineinstructions.config import PipelineConfig
from fineinstructions.pipeline import Pipeline
from tests.test_pipeline import scripted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("call_log")
    parser.add_argument("--kill-at-call", type=int, default=0)
    parser.add_argument("--call-delay", type=float, default=0.0)
    args = parser.parse_args()
    cfg = PipelineConfig.model_validate_json(Path(args.config).read_text())
    calls = {"n": 0}

    def responder(conversation):
        calls["n"] += 1
        if calls["n"] == args.kill_at_call:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(args.call_delay)
        with open(args.call_log, "a") as log:
            log.write("call\n")
        return scripted(conversation)

    pipeline = Pipeline(cfg, show_progress=False)
    pipeline.backends.register(cfg.generator, FakeBackend(responder, model_id="scripted"))
    pipeline.run()


if __name__ == "__main__":
    main()
