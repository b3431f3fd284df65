"""The data path of an active `save_node`: intake -> queue -> inference -> verdict -> publish.

- intake (intake callback group): decode and preprocess a message on the model's device, check
  it against the declared input box, queue it (`InputQueue`, newest first by default);
- inference (inference group): take the next input, `Backend.infer` it; under
  `publish_policy: immediate` publish the unverified result at once on `~/provisional_output`;
- verdict (the verifier group's thread, via the verdict future): publish the verified or repaired
  result on `~/output` and the fault status on `~/fault_status`, both with the input's header.

`~/output` carries only verified or repaired results (a bare, protect=false node publishes its
unverified results there: it was asked to serve without SAVE). Every received input gets exactly
one `~/fault_status`: rejected, dropped (superseded, queue full, shutdown), failed, or its verdict.
A policy's matched set of messages (`policy_io.MatchedInputs`) is one input here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import torch
from std_msgs.msg import Header

from save_ros.core.inputs import InputBatch
from save_ros.preprocess import InputError, check_in_box
from save_ros.ros import convert, params
from save_ros.ros.backend import Backend, Verdict, resolve
from save_ros.ros.health import ERROR, OK, WARN, Health, Outcome
from save_ros.ros.intake import InputQueue
from save_ros.ros.model_source import LoadedModel
from save_ros.ros.outputs import OutputEncoder
from save_ros.ros.policy_io import MatchedInputs

DROP_TEXT = {"superseded": "dropped: superseded by a newer input (queue_order newest_first)",
             "queue_full": "dropped: inference queue full",
             "shutdown": "dropped: the node is shutting down or deactivating"}


@dataclass
class Pending:
    """One queued input: its header (stamp, frame), tensor, sequence number and arrival time."""

    header: Header
    x: torch.Tensor
    seq: int
    received: float


@dataclass
class Publishers:
    """Where results go: callables taking a message (lifecycle publishers' publish)."""

    output: Callable[[object], None]
    provisional: Callable[[object], None]
    status: Callable[[object], None]


class Pipeline:
    """Intake, inference and publishing for one configured model (see the module docstring)."""

    def __init__(self, cfg: params.NodeConfig, loaded: LoadedModel, backend: Backend,
                 encoder: OutputEncoder, health: Health, pubs: Publishers, logger,
                 status_name: str, stamp_now: Callable[[], object],
                 wake_inference: Callable[[], None], wake_verifier: Callable[[], None],
                 wake_diagnostics: Callable[[], None]) -> None:
        self.cfg, self.loaded, self.backend, self.encoder = cfg, loaded, backend, encoder
        self.health, self.pubs, self.logger = health, pubs, logger
        self.status_name, self.stamp_now = status_name, stamp_now
        self._wake_inference, self._wake_verifier = wake_inference, wake_verifier
        self._wake_diagnostics = wake_diagnostics
        self.queue: InputQueue[Pending] = InputQueue(
            cfg.queue_size, cfg.queue_order is params.QueueOrder.NEWEST_FIRST)
        self.device = torch.device(cfg.device)
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._in_flight: set[Future] = set()
        self._in_flight_lock = threading.Lock()
        self._intake = threading.Condition()
        self._intake_busy = 0  # intake callbacks running now
        self._sealed = False  # after seal(): an input is neither counted nor answered
        self.live_samples: list = []  # tensors, or a policy's tuples
        self.on_live_calibration: Callable[[object], None] | None = None

    # -- intake ---------------------------------------------------------------------------
    def decode(self, msg) -> torch.Tensor:
        """A message as a model input on the model's device, inside the declared box."""
        return decode_input(self.cfg, self.loaded, msg)

    def on_input(self, msg) -> None:
        """Decode and queue one input; a bad one is rejected with a status, never raised."""
        with self._intake:
            if self._sealed:  # the subscription is gone; a message taken before is ignored
                return
            self._intake_busy += 1
        try:
            self._on_input(msg)
        finally:
            with self._intake:
                self._intake_busy -= 1
                self._intake.notify_all()

    def seal(self, timeout: float) -> None:
        """After the subscription is destroyed: wait for running intake callbacks, ignore any
        later one (so every input counted as received was answered before publishers go)."""
        with self._intake:
            self._sealed = True
            self._intake.wait_for(lambda: self._intake_busy == 0, timeout)

    def unseal(self) -> None:
        """Take inputs again (re-activation)."""
        with self._intake:
            self._sealed = False
        self.queue.reopen()

    def _on_input(self, msg) -> None:
        received = time.perf_counter()
        self.health.on_received()
        header = getattr(msg, "header", None)
        if header is None:  # Float32MultiArray has no header: stamp it on arrival
            header = Header(stamp=self.stamp_now())
        with self._seq_lock:
            self._seq += 1
            seq = self._seq
        try:
            x = self.decode(msg)
        except InputError as exc:
            self.health.on_rejected(exc.kind, str(exc))
            self.logger.warning(f"input rejected: {str(exc)[:200]}", throttle_duration_sec=5.0)
            self.publish_status(header, ERROR, f"input rejected: {exc}",
                                {"verified": False, "rejected": True, "reject_kind": exc.kind,
                                 "seq": seq, "published": False})
            self._wake_diagnostics()
            return
        self._record_live(x)
        dropped, reason = self.queue.put(Pending(header, x, seq, received))
        self._wake_inference()
        self._report_dropped(dropped, reason)

    def _record_live(self, x: torch.Tensor) -> None:
        """Keep the first `calibration.live_samples` inputs; hand them over once complete."""
        want = self.cfg.calibration_live
        if not want or self.on_live_calibration is None or len(self.live_samples) >= want:
            return
        self.live_samples.append(x.detach().cpu() if isinstance(x, torch.Tensor)
                                 else tuple(t.detach().cpu() for t in x))
        self.health.calibration = f"recording {len(self.live_samples)}/{want} live inputs"
        if len(self.live_samples) == want:
            first = self.live_samples[0]
            self.on_live_calibration(  # a policy's matched sets: one batch per input
                torch.cat(self.live_samples) if isinstance(first, torch.Tensor) else
                InputBatch(tuple(torch.cat(p) for p in zip(*self.live_samples, strict=True))))

    def _report_dropped(self, dropped: list[Pending], reason: str) -> None:
        """Say so, stamped, so a controller waiting on a dropped input moves on."""
        if not dropped:
            return
        self.health.on_dropped(reason, len(dropped))
        for item in dropped:
            self.publish_status(item.header, OK if reason == "superseded" else WARN,
                                DROP_TEXT[reason], {"verified": False, "dropped": True,
                                                    "drop_reason": reason, "seq": item.seq,
                                                    "published": False})

    # -- inference ------------------------------------------------------------------------
    def drain(self) -> None:
        """Infer waiting inputs until the queue is empty (or closed), or `max_awaiting_verdict`
        inferences wait for their verdict: then inference pauses (a verdict wakes it again) and
        the inputs arriving meanwhile replace waiting ones in the queue, each answered as
        dropped and counted. This bounds the memory of saved values (a re-analysis or a slow
        verifier once let 2,399 inferences wait, issue 19)."""
        while True:
            with self._in_flight_lock:
                if len(self._in_flight) >= self.cfg.max_awaiting_verdict:
                    return
            item, stale = self.queue.take()
            self._report_dropped(stale, "superseded")
            if item is None:
                return
            try:
                self._infer(item)
            except InputError as exc:  # the runtime refused it before inference: not a fault
                self.health.on_rejected(exc.kind, str(exc))
                self.publish_status(item.header, ERROR, f"input rejected: {exc}",
                                    {"verified": False, "rejected": True, "reject_kind": exc.kind,
                                     "seq": item.seq, "published": False})
                self._wake_diagnostics()
            except Exception as exc:  # callback boundary: report, keep serving
                self.logger.error(f"inference failed: {exc!r}"[:300])
                self.health.on_failed(f"inference failed: {type(exc).__name__}: {exc}")
                self.publish_status(item.header, ERROR, f"inference failed: {exc}",
                                    {"verified": False, "seq": item.seq, "published": False})
                self._wake_diagnostics()
            finally:
                self.queue.done()

    def _infer(self, item: Pending) -> None:
        output, verdict = self.backend.infer(item.x)
        self.health.on_inferred()
        provisional = self.cfg.publish_policy is params.PublishPolicy.IMMEDIATE
        if provisional and self.cfg.protect and _finite(output):
            self.pubs.provisional(self.encoder.message(output, item.header))
            self.health.on_published(provisional=True)
        with self._in_flight_lock:
            self._in_flight.add(verdict)
            self.health.on_awaiting(len(self._in_flight))
        verdict.add_done_callback(lambda f: self._on_verdict(item, output, f, provisional))
        self._wake_verifier()

    def _on_verdict(self, item: Pending, output: torch.Tensor, future: Future,
                    provisional: bool) -> None:
        """Publish the result (verified, repaired, or a bare model's) and its fault status."""
        try:
            self._publish_verdict(item, output, future, provisional)
        finally:  # only now: finish() waits until this input's status is out
            with self._in_flight_lock:
                self._in_flight.discard(future)
                self.health.on_awaiting(len(self._in_flight))
            try:  # inference may have paused at max_awaiting_verdict
                self._wake_inference()
            except Exception:  # its guard condition is gone (shutdown): nothing to wake
                pass

    def _publish_verdict(self, item: Pending, output: torch.Tensor, future: Future,
                         provisional: bool) -> None:
        latency = time.perf_counter() - item.received
        try:
            verdict: Verdict = future.result()
        except Exception as exc:  # the verifier itself failed: the result is unverified
            verdict = Verdict.failed(f"verification failed: {exc!r}")
        final = verdict.output if verdict.output is not None else output
        published = False
        nonfinite = not _finite(final)
        if nonfinite:
            # Edit has restored golden weights for any detection, so a NaN/inf left here comes
            # from the model on this (in-box) input: not a hardware fault, never published
            verdict = Verdict(verified=False, level=ERROR, message=(
                "model output is not finite for this in-box input with weights matching their "
                "golden copies: a model/input problem, not a hardware fault; not published"),
                values={"verified": False, "nonfinite_output": True})
        elif verdict.publishable or not self.cfg.protect:
            self.pubs.output(self.encoder.message(final, item.header))
            self.health.on_published()
            published = True
        self.health.on_outcome(Outcome(
            verified=verdict.verified, detected=0 if nonfinite else verdict.detected,
            repaired=0 if nonfinite else verdict.repaired,
            unrepaired=0 if nonfinite else verdict.unrepaired, latency_s=latency,
            nonfinite=nonfinite))
        values = {"seq": item.seq, "published": published, "latency_ms": latency * 1e3}
        if provisional:
            values["provisional_published"] = self.cfg.protect and _finite(output)
        values.update(verdict.values)
        self.publish_status(item.header, verdict.level, verdict.message, values)
        if verdict.level != OK:
            self._wake_diagnostics()

    def publish_status(self, header: Header, level: bytes, message: str,
                       values: dict[str, object]) -> None:
        """One `~/fault_status` message for one input."""
        status = convert.diagnostic_status(self.status_name, self.health.hardware_id, level,
                                           message, values)
        self.pubs.status(convert.diagnostic_array(header, [status]))

    # -- stopping -------------------------------------------------------------------------
    def finish(self, timeout: float) -> int:
        """Stop taking inputs; let the input being inferred and in-flight verification finish.

        Waiting inputs and verdicts still open at the deadline are answered (status) as not
        inferred / unverified. Returns how many. The backend is NOT closed here.
        """
        deadline = time.monotonic() + timeout
        left = self.queue.close()
        self.queue.wait_idle(max(0.0, deadline - time.monotonic()))
        self.health.on_dropped("shutdown", len(left)) if left else None
        for item in left:
            self.publish_status(item.header, WARN, DROP_TEXT["shutdown"],
                                {"verified": False, "dropped": True, "drop_reason": "shutdown",
                                 "seq": item.seq, "published": False})
        while time.monotonic() < deadline:
            with self._in_flight_lock:
                if not self._in_flight:
                    break
            self._wake_verifier()
            time.sleep(0.01)
        with self._in_flight_lock:
            pending = list(self._in_flight)
        for future in pending:  # _on_verdict reports each one unverified
            resolve(future, error=TimeoutError("shutdown before verification finished"))
        with self._in_flight_lock:  # a verdict being published on the verifier thread
            busy = list(self._in_flight)
        for future in busy:
            try:
                future.result(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:  # its callback reports it; here only wait for it
                pass
        return len(left) + len(pending)


def decode_input(cfg: params.NodeConfig, loaded: LoadedModel, msg) -> torch.Tensor:
    """A message as a model input on cfg.device (dtype, box checked); InputError if it cannot."""
    if isinstance(msg, MatchedInputs):  # a policy's set, decoded and checked per input
        return msg.x
    spec, dev = loaded.input, torch.device(cfg.device)
    if cfg.input_type is params.InputType.IMAGE:
        x = convert.image_to_tensor(msg, spec, cfg.image, dev)
    elif cfg.input_type is params.InputType.JOINT_STATE:
        x = convert.joint_state_to_tensor(msg, spec, cfg.joint_names, dev).to(loaded.dtype)
    else:
        x = convert.multiarray_to_tensor(msg, spec, dev).to(loaded.dtype)
    return check_in_box(x, spec)


def _finite(output: torch.Tensor) -> bool:
    return bool(torch.isfinite(output).all()) if output.is_floating_point() else True
