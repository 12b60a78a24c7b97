"""Children that are supervised and never outlive their parent, with real processes and real
kills: `w2v serve --backend triton`'s own tritonserver (restarted with back-off after SIGKILL,
health NOT_SERVING meanwhile; killed with the service; its scratch repository removed then or
at the next start) and `w2v transcribe`'s decode workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
import soundfile as sf

from tests.conftest import speech_like
from tests.serve_helpers import tiny_model_dir
from tests.service_helpers import wait_for
from w2v_serve.service.client import RecognizerClient, RecognizerError, final_text
from w2v_serve.transcribe import Transcriber

AUDIO = speech_like(16000 * 2 + 321, seed=4, scale=0.5)


def children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of ``pid``, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def state(pid: int) -> str | None:
    """The process's state letter (Z: zombie), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def health(address: str) -> int | None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
    except grpc.RpcError:
        return None


@pytest.mark.slow
def test_serve_triton_restarts_its_tritonserver_and_takes_it_along_when_killed(tmp_path):
    pytest.importorskip("tritonclient.grpc")
    from grpc_health.v1 import health_pb2

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    stale = scratch / "w2v-serve-repo-999999999-x"        # left by a killed run (no such process)
    (stale / "acoustic").mkdir(parents=True)
    offline = Transcriber(tiny_model_dir("attention")).transcribe(AUDIO, sample_rate=16000).text
    serve = subprocess.Popen(
        [sys.executable, "-m", "w2v_serve.cli", "serve", "--port", "0", "--backend", "triton",
         "--model", str(tiny_model_dir("attention")), "--chunk-ms", "400", "--left-context-ms", "60000",
         "--right-context-ms", "60000", "--endpoint-ms", "60000", "--triton-check-interval", "0.5"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(scratch)})
    tritons: list[int] = []
    try:
        address = None
        deadline = time.monotonic() + 180
        for line in serve.stderr:
            if "listening on" in line:
                address = line.split("listening on ")[1].split()[0]
                break
            if "no tritonserver" in line or time.monotonic() > deadline:
                pytest.skip(f"no tritonserver here: {line}")
        assert address, "the service did not start"
        import threading
        threading.Thread(target=lambda: [None for _ in serve.stderr], daemon=True).start()
        assert not stale.exists()
        repos = [p for p in scratch.iterdir() if p.name.startswith("w2v-serve-repo-")]
        assert [p.name.split("-")[3] for p in repos] == [str(serve.pid)]
        tritons = [p for p in children(serve.pid) if "tritonserver" in command(p)]
        assert len(tritons) == 1
        with RecognizerClient(address) as client:
            assert final_text(client.stream_audio(AUDIO, chunk_ms=250)) == offline

        # tritonserver dies: reaped, NOT_SERVING while it is down, restarted, SERVING, correct again.
        killed_at = time.monotonic()
        os.kill(tritons[0], signal.SIGKILL)
        assert wait_for(lambda: health(address) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=5)
        with RecognizerClient(address) as client, pytest.raises(RecognizerError) as info:
            list(client.stream_audio(AUDIO[:1600]))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert wait_for(lambda: state(tritons[0]) is None, timeout=5), "the dead tritonserver was not reaped"
        assert wait_for(lambda: health(address) == health_pb2.HealthCheckResponse.SERVING, timeout=120)
        recovered_s = time.monotonic() - killed_at
        tritons = [p for p in children(serve.pid) if "tritonserver" in command(p)]
        assert len(tritons) == 1
        with RecognizerClient(address) as client:
            assert final_text(client.stream_audio(AUDIO, chunk_ms=250)) == offline, recovered_s

        # The service is SIGKILLed: its tritonserver (and that one's backend stubs) go with it.
        family = [tritons[0]] + children(tritons[0])
        serve.kill()
        serve.wait()
        assert wait_for(lambda: all(state(p) in (None, "Z") for p in family), timeout=15), \
            [(p, state(p), command(p)) for p in family]
        # Its scratch repository is left behind; the next start removes it.
        left = [p for p in scratch.iterdir() if p.name.startswith("w2v-serve-repo-")]
        assert left
        from w2v_serve.triton.launcher import scratch_repository

        saved, tempfile.tempdir = tempfile.tempdir, str(scratch)
        try:
            fresh = scratch_repository()
        finally:
            tempfile.tempdir = saved
        assert [p for p in scratch.iterdir() if p.name.startswith("w2v-serve-repo-")] == [fresh]
    finally:
        serve.kill()
        serve.wait()
        for p in tritons:
            if state(p) not in (None, "Z"):
                os.kill(p, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_transcribe_decode_workers_die_with_it(tmp_path, sig):
    """`w2v transcribe --decode-workers 2` killed while it works leaves no worker behind."""
    files = []
    for i in range(4):
        path = tmp_path / f"long{i}.wav"
        sf.write(str(path), speech_like(16000 * 60, seed=i, scale=0.5), 16000)
        files.append(str(path))
    proc = subprocess.Popen([sys.executable, "-m", "w2v_serve.cli", "transcribe", *files, "--model",
                             str(tiny_model_dir("attention")), "--decoder", "beam", "--decode-workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        assert wait_for(lambda: len(children(proc.pid)) >= 2, timeout=60)
        workers = children(proc.pid)
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
        assert wait_for(lambda: all(state(p) in (None, "Z") for p in workers), timeout=5), \
            [(p, state(p), command(p)) for p in workers]
    finally:
        proc.kill()
        proc.wait()
        for p in workers:          # whatever the outcome, nothing of this test keeps running
            if state(p) not in (None, "Z"):
                os.kill(p, signal.SIGKILL)
