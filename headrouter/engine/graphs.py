"""CUDA-graph capture of the decode step: record `step_once` once per generate call, replay it every step.

The captured part is idempotent at a given step (see `headrouter.engine.loop`), so the warm-up run that capture
needs computes the current step for real and the first replay recomputes the same values. Everything the step
reads and writes lives in the call's `DecodeState` and `StaticKV` buffers, whose addresses stay fixed, and the
per-step changes (write column, positions, step counter) are device tensors advanced in place outside the graph.
A capture that fails (an op that syncs with the host, e.g. a mixture-of-experts router with data-dependent
shapes) logs why and leaves the call on the eager step; the tokens are the same either way.
"""

from __future__ import annotations

import logging

import torch

from headrouter.engine.loop import DecodeState, step_once

__all__ = ["capture", "capture_step"]

log = logging.getLogger("headrouter")


def capture_step(state: DecodeState):
    """A zero-argument function that replays the captured step of `state`, or None if capture failed or
    the state is not on CUDA (or keeps per-step logits, which a graph cannot append to a list)."""
    if state.tokens.device.type != "cuda" or state.keep_logits:
        return None
    return capture(lambda: step_once(state), state.tokens.device)


def capture(step, device):
    """`step` (a zero-argument, idempotent function over fixed buffers) captured as a CUDA graph on `device`:
    its replay, or None if capture failed (logged; the caller runs `step` eagerly)."""
    try:
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()  # warm-up: the current step, computed for real
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    except Exception as e:  # noqa: BLE001 - any capture failure falls back to the eager step
        log.warning("CUDA graph capture of the decode step failed, running it eagerly: %s", e)
        torch.cuda.synchronize()
        return None
    return graph.replay
