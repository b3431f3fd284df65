"""`save_node` entry point: start-up checks, signals, the executor, an orderly shutdown.

The node itself is `save_ros.ros.save_node.SaveNode` (a managed lifecycle node); its data path is
`save_ros.ros.pipeline`. This module imports nothing heavy at the top: SIGINT/SIGTERM handlers are
installed before torch and rclpy load, so a signal at any point of start-up ends the process
(exit 0) instead of a KeyboardInterrupt traceback, or being lost where the shell started the
process with SIGINT ignored.

Exit codes: 0 clean shutdown (also after a signal during start-up), 2 bad parameter or params
file, 3 model cannot be loaded or protected.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from typing import Any

EXIT_OK, EXIT_BAD_PARAMETER, EXIT_MODEL = 0, 2, 3


class StartupInterrupted(BaseException):
    """SIGINT/SIGTERM arrived during start-up (a BaseException: no `except Exception` eats it)."""


class _Signals:
    """SIGINT/SIGTERM: during start-up raise StartupInterrupted, afterwards set `stop`."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.starting = True
        self.raising = False  # not while importing: an exception inside an import leaves the
        # module half-loaded and the next import fails with an unrelated ImportError
        self._old = {sig: signal.signal(sig, self._handle)
                     for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore(self, ignore: bool = False) -> None:
        """Put back the handlers found (or ignore SIGINT/SIGTERM from here on)."""
        for sig, handler in self._old.items():
            signal.signal(sig, signal.SIG_IGN if ignore else handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        first = not self.stop.is_set()
        self.stop.set()
        if self.starting and self.raising and first:
            raise StartupInterrupted(signal.Signals(signum).name)

    def imported(self) -> None:
        """The heavy imports are done: from here a start-up signal interrupts at once."""
        if self.stop.is_set():
            raise StartupInterrupted("signal while importing")
        self.raising = True

    def started(self) -> None:
        """From here on a signal only sets `stop` (the main loop shuts down in order)."""
        self.starting = False
        if self.stop.is_set():
            raise StartupInterrupted("signal during start-up")


def __getattr__(name: str) -> Any:
    """`SaveNode` lives in save_node.py; kept importable from here."""
    if name == "SaveNode":
        from save_ros.ros.save_node import SaveNode

        return SaveNode
    raise AttributeError(name)


def _err(text: str) -> None:
    print(f"save_node: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: build the node from --ros-args, serve until SIGINT/SIGTERM, shut down."""
    signals = _Signals()
    try:
        return _run(sys.argv if argv is None else argv, signals)
    except (StartupInterrupted, Exception) as exc:
        if not signals.stop.is_set():
            raise
        # a signal during start-up; it may surface as another error of the code it interrupted
        _err(f"stopped during start-up ({type(exc).__name__}: {exc})"[:300])
        try:
            import rclpy

            rclpy.try_shutdown()
        except Exception:  # best effort: the process is leaving anyway
            pass
        return EXIT_OK
    finally:
        # as a process: exiting now, a further signal must not kill the interpreter's teardown
        # (exit -2 instead of 0); called in-process (tests): put the caller's handlers back
        signals.restore(ignore=argv is None)


def _run(argv: list[str], signals: _Signals) -> int:
    from save_ros.ros.paramfile import ParamsFileError, check_args
    from save_ros.ros.usage import help_text, program, wants_help

    if wants_help(argv):
        sys.stdout.write(help_text(prog=program(argv)))
        return EXIT_OK
    try:
        file_warnings = check_args(argv)
    except ParamsFileError as exc:
        _err(str(exc))
        return EXIT_BAD_PARAMETER
    import rclpy
    import torch
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.impl.implementation_singleton import rclpy_implementation
    from rclpy.signals import SignalHandlerOptions

    from save_ros.ros import params
    from save_ros.ros.save_node import SaveNode

    torch.set_num_threads(1)  # one inference thread; DDS and the verifier need the other cores
    import save_ros.core.protect  # noqa: F401 (imported here, where a signal is only noted)

    signals.imported()
    try:
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except rclpy_implementation.RCLError as exc:  # unparsable --ros-args or params file
        where = re.sub(r", at \S+:\d+", "", str(exc)).replace("\n", " ")  # rcl's C locations
        _err(f"bad --ros-args: {where}")
        return EXIT_BAD_PARAMETER
    try:
        node = SaveNode()
    except (params.ParameterError, rclpy.exceptions.InvalidParameterValueException,
            rclpy.exceptions.InvalidParameterTypeException) as exc:
        _err(f"bad parameter: {exc}")
        rclpy.try_shutdown()
        return EXIT_BAD_PARAMETER
    for warning in file_warnings:
        node.get_logger().warning(warning)
    if node.cfg.autostart:
        node.trigger_configure()
        if node.configure_error is not None:
            kind = "bad parameter" if node.configure_error.exit_code == EXIT_BAD_PARAMETER \
                else "cannot serve the model"
            _err(f"{kind}: {node.configure_error}")
            node.destroy_node()
            rclpy.try_shutdown()
            return node.configure_error.exit_code
        node.trigger_activate()
    node.on_finalized = signals.stop.set  # ~/change_state shutdown ends the process too
    executor = MultiThreadedExecutor(num_threads=6)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="executor", daemon=True)
    # the input subscription: its own node and a single-threaded executor (see SaveNode)
    intake = SingleThreadedExecutor()
    intake.add_node(node.intake_node)
    intake_spinner = threading.Thread(target=intake.spin, name="intake", daemon=True)
    try:
        spinner.start()
        intake_spinner.start()
        signals.started()
        while not signals.stop.wait(0.2):
            if not spinner.is_alive() or not intake_spinner.is_alive():
                break
    finally:
        # runs on a signal during the last start-up steps too: an executor thread left running
        # at interpreter exit aborts the process ("terminate called without an active exception")
        _shut_down(node, executor, spinner, (intake, intake_spinner))
    return EXIT_OK


def _wait_idle(executor, deadline: float) -> None:
    """Wait until the executor runs no callback (its handler futures are done)."""
    while time.monotonic() < deadline:
        if all(f.done() for f in list(getattr(executor, "_futures", []))):
            return
        time.sleep(0.01)


def _collect_leftover_tasks(node, executor) -> None:
    """Fetch the errors of handler tasks the executor left behind when it stopped.

    rclpy's Executor.shutdown sets its shutdown flag before it checks it, so it does not wait
    for outstanding work; handlers that ran into entities being torn down then end in errors
    nobody fetches, printed at garbage collection as "The following exception was never
    retrieved: cannot use Destroyable". They are shutdown noise, logged here once.
    """
    lost = 0
    for future in list(getattr(executor, "_futures", [])):
        if future.done() and future.exception() is not None:
            lost += 1
    for task, *_ in list(getattr(executor, "_tasks", [])):
        if task.done() and task.exception() is not None:
            lost += 1
    if lost:
        node.get_logger().debug(f"{lost} executor tasks ended in errors during shutdown")


def _shut_down(node, executor, spinner: threading.Thread, intake=None) -> None:
    """Answer every input in flight, stop the executor, then release (unsubscribe, publishers,
    model). Entities are destroyed only once the executor has stopped: destroying them under a
    spinning executor races its wait set (rclpy: "cannot use Destroyable")."""
    from rclpy.impl.implementation_singleton import rclpy_implementation

    node.get_logger().info("shutting down: finishing in-flight verification")
    deadline = time.monotonic() + node.cfg.shutdown_timeout + 10.0
    node.quiesce()  # the verifier and inference threads still run: in-flight work completes
    # no new callbacks, and none running, before the executor stops: its shutdown destroys its
    # guard condition without waiting, and a callback finishing after that raises in rclpy
    executor.remove_node(node)
    if intake is not None:  # inputs stop arriving when the callbacks do
        intake[0].remove_node(node.intake_node)
    _wait_idle(executor, deadline)
    if not executor.shutdown(timeout_sec=max(1.0, deadline - time.monotonic())):
        node.get_logger().warning("executor did not stop in time")
    spinner.join(timeout=5.0)
    if intake is not None:
        if not intake[0].shutdown(timeout_sec=max(1.0, deadline - time.monotonic())):
            node.get_logger().warning("intake executor did not stop in time")
        intake[1].join(timeout=5.0)
    _collect_leftover_tasks(node, executor)
    try:
        node.trigger_shutdown()
    except rclpy_implementation.RCLError:  # already finalized (through ~/change_state)
        pass
    time.sleep(0.2)  # let the last statuses and diagnostics leave before the context goes
    node.destroy_node()
    import rclpy

    rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
