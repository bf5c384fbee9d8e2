"""Node agent: container runs as real processes (mount namespace, clean environment, signals, sweep).

These start `container_init.py` for real, so they need what the testbed machines give: root and
mount namespaces. No cluster is involved.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.testbed.node_agent import processes
from tests.testbed.node_agent.containers import LaunchSpec, Mount, RunFiles, exec_in, launch
from tests.testbed.node_agent.logs import PodLog, decode_cri, join_lines

pytestmark = pytest.mark.unit

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "GREETING": "hi"}


@pytest.fixture
def pod_log(tmp_path: Path) -> Iterator[PodLog]:
    log = PodLog(tmp_path / "pod.log", prefixed=False)
    yield log
    log.close()


def spec(script: str, mounts: list[Mount] | None = None, working_dir: str = "/") -> LaunchSpec:
    return LaunchSpec(["sh", "-c", script], dict(ENV), working_dir, mounts or [])


def output(files: RunFiles) -> list[str]:
    pieces, _ = decode_cri(files.log.read_bytes())
    return [line.text.decode() for line in join_lines(pieces)]


def test_a_run_sees_its_mounts_its_environment_only_and_reports_its_end(tmp_path: Path, pod_log: PodLog) -> None:
    source, target = tmp_path / "volume", tmp_path / "mounted"
    source.mkdir()
    (source / "data").write_text("from the volume\n")
    files = RunFiles(tmp_path / "run", 0)
    script = "env | sort; pwd; cat mounted/data; echo done > /dev/termination-log; exit 4"
    mounts = [Mount(str(source), str(target), read_only=True), Mount(str(files.termination), "/dev/termination-log")]
    process = launch(spec(script, mounts, working_dir=str(tmp_path)), files, pod_log, "main")
    assert process.wait() == 4
    lines = output(files)
    assert [line for line in lines if "=" in line and not line.startswith(("PWD=", "SHLVL=", "_="))] == [
        "GREETING=hi", "PATH=/usr/local/bin:/usr/bin:/bin"]
    assert lines[-2:] == [str(tmp_path), "from the volume"]
    assert process.termination_message() == "done\n"
    assert list(target.iterdir()) == [], "the bind mount stays inside the container"
    assert (tmp_path / "pod.log").read_text().endswith("from the volume\n")
    assert not files.spec.exists(), "the launch spec (it holds secrets) is removed once read"


def test_a_read_only_mount_cannot_be_written(tmp_path: Path, pod_log: PodLog) -> None:
    source = tmp_path / "secret"
    source.mkdir()
    files = RunFiles(tmp_path / "run", 0)
    target = tmp_path / "mounted"
    process = launch(spec(f"touch {target}/x", [Mount(str(source), str(target), read_only=True)]),
                     files, pod_log, "main")
    assert process.wait() == 1
    assert "Read-only file system" in output(files)[-1]


def test_a_missing_executable_is_a_start_error(tmp_path: Path, pod_log: PodLog) -> None:
    files = RunFiles(tmp_path / "run", 0)
    process = launch(LaunchSpec(["no-such-command"], dict(ENV), "/", []), files, pod_log, "main")
    assert process.wait() == 128
    assert process.start_error() == 'exec: "no-such-command": executable file not found in $PATH'


def test_terminate_sends_sigterm_to_the_group_then_sigkill(tmp_path: Path, pod_log: PodLog) -> None:
    files = RunFiles(tmp_path / "run", 0)
    trapping = launch(spec("trap 'echo term; exit 7' TERM; echo up; while true; do sleep 0.1; done"),
                      files, pod_log, "main")
    processes_wait_for_output(files, "up")
    trapping.terminate(10)
    assert trapping.wait() == 7
    stubborn_files = RunFiles(tmp_path / "run", 1)
    stubborn = launch(spec("trap '' TERM; echo up; while true; do sleep 0.1; done"), stubborn_files, pod_log, "main")
    processes_wait_for_output(stubborn_files, "up")
    began = time.monotonic()
    stubborn.terminate(0.5)
    assert stubborn.wait() == 128 + signal.SIGKILL
    assert time.monotonic() - began < 5


def test_the_end_of_a_run_kills_whatever_it_left_running(tmp_path: Path, pod_log: PodLog) -> None:
    processes.become_subreaper()  # the escaped process is re-parented here, and reaped below
    files = RunFiles(tmp_path / "run", 0)
    pid_file = tmp_path / "daemon.pid"
    script = f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 300' </dev/null >/dev/null 2>&1 & sleep 0.3"
    process = launch(spec(script), files, pod_log, "main")
    assert process.wait() == 0
    daemon = int(pid_file.read_text())
    wait_for(lambda: processes.mount_namespace(daemon) is None, 5, "the escaped process to be killed")
    processes.reap_orphans()


def test_exec_runs_inside_the_containers_mount_namespace(tmp_path: Path, pod_log: PodLog) -> None:
    source = tmp_path / "volume"
    source.mkdir()
    (source / "ready").write_text("yes")
    files = RunFiles(tmp_path / "run", 0)
    target = tmp_path / "mounted"
    process = launch(spec("sleep 30", [Mount(str(source), str(target))]), files, pod_log, "main")
    try:
        assert exec_in(process, ["cat", f"{target}/ready"], dict(ENV), "/", 5) == (0, "yes")
        assert exec_in(process, ["sleep", "5"], dict(ENV), "/", 0.3) == (None, "")
    finally:
        process.terminate(0)
        process.wait()


def processes_wait_for_output(files: RunFiles, text: str) -> None:
    wait_for(lambda: files.log.exists() and text in output(files), 10, f"the run to print {text!r}")


def test_the_agent_never_leaks_into_a_run(tmp_path: Path, pod_log: PodLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/admin.kubeconfig")
    monkeypatch.setenv("HPO_MYSQL_PASSWORD", "hunter2")
    files = RunFiles(tmp_path / "run", 0)
    process = launch(spec("env"), files, pod_log, "main")
    assert process.wait() == 0
    names = {line.split("=", 1)[0] for line in output(files)}
    assert not names & {"KUBECONFIG", "HPO_MYSQL_PASSWORD"} and "GREETING" in names
    assert os.environ["KUBECONFIG"] == "/admin.kubeconfig"
