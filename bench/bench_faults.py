"""A bounded soak under attack and faults: are finals lost or wrong, how late are partials, does
memory come back?

Embedded phase: a ``w2v serve`` process (tiny "local" model of the tests, streaming window chunk
200 ms / right context 320 ms, idle timeout 5 s). Normal clients stream 3 s recordings at
playback speed in 100 ms messages, one after another on ``NORMAL`` threads, while attackers run:
``BIG`` streams that send one 1 MiB message (65 s of 8 kHz LINEAR16) each, ``TRICKLE`` streams
that send 2 bytes every 0.5 s, and ``DROPPED`` streams that send 1 s of audio then close their
connection without a word, over and over. Reported: normal streams run, finals lost (an error or
no final) and wrong (text differs from offline recognition of the same audio; goal 0 for
both), partial latency (a partial's arrival minus the sending of the audio it covers) median and
p95, and the server's RSS before (after one warm-up stream), at its peak and 3 s after the
attackers left.

Triton phase (``--skip-triton`` leaves it out): ``w2v serve --backend triton`` with its own
tritonserver; normal clients stream while the tritonserver is killed (SIGKILL) once. A client
whose stream ends UNAVAILABLE retries the recording, as clients of the service do; reported:
finals lost after retries and wrong, seconds until health was SERVING again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

NORMAL, BIG, TRICKLE, DROPPED = 3, 2, 4, 2
UNITS = {"embedded.rss_mb.before": "MB", "embedded.rss_mb.peak": "MB", "embedded.rss_mb.after": "MB",
         "embedded.rss_mb.after_vs_before": "x"}
SOAK_S = 40.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _serve(args: list[str], env=None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "w2v_serve.cli", "serve", "--port", "0", *args],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    for line in proc.stderr:
        if "listening on" in line:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, line.split("listening on ")[1].split()[0]
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("the service did not start")


def _normal(address: str, audio: np.ndarray, expected: str, out: dict, stop: threading.Event,
            retry_until: float = 0.0) -> None:
    """Stream ``audio`` again and again until ``stop``; count finals, lost, wrong; partial latency."""
    import grpc

    from w2v_serve.service.client import RecognizerClient, RecognizerError

    while not stop.is_set():
        sent: list[float] = []

        def chunks():
            for i in range(0, len(audio), 1600):
                time.sleep(0.1)
                sent.append(time.monotonic())
                yield audio[i:i + 1600].astype("<f4").tobytes()

        with RecognizerClient(address) as client:
            try:
                results = []
                for r in client.stream(chunks(), client.config()):
                    now = time.monotonic()
                    if not r["is_final"] and sent:
                        covered = min(len(sent) - 1, max(0, int(round(r["end_s"] / 0.1)) - 1))
                        out["partial_latency"].append(now - sent[covered])
                    results.append(r)
            except RecognizerError as e:
                if e.code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < retry_until:
                    out["retries"] += 1
                    time.sleep(1.0)
                    continue
                out["lost"] += 1
                out["errors"].append(str(e)[:120])
                continue
        out["streams"] += 1
        text = " ".join(r["text"] for r in results if r["is_final"] and r["text"])
        if not results or not results[-1]["is_final"]:
            out["lost"] += 1
        elif text != expected:
            out["wrong"] += 1


def _attackers(address: str, stop: threading.Event) -> list[threading.Thread]:
    import grpc

    from w2v_serve.service.proto import w2v_pb2 as pb
    from w2v_serve.service.proto import w2v_pb2_grpc as pb_grpc

    def config(rate):
        cfg = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=rate)
        return pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(config=cfg))

    big = np.random.default_rng(0).integers(-3000, 3000, (1 << 20) // 2).astype("<i2").tobytes()

    def big_sender():
        while not stop.is_set():
            with grpc.insecure_channel(address) as ch:
                call = pb_grpc.RecognizerStub(ch).StreamingRecognize(
                    iter([config(8000), pb.StreamingRecognizeRequest(audio_content=big)]), timeout=120)
                try:
                    for _ in call:
                        pass
                except grpc.RpcError:
                    pass

    def trickler():
        def requests():
            yield config(8000)
            while not stop.is_set():
                time.sleep(0.5)
                yield pb.StreamingRecognizeRequest(audio_content=b"\0\0")
        while not stop.is_set():
            with grpc.insecure_channel(address) as ch:
                try:
                    for _ in pb_grpc.RecognizerStub(ch).StreamingRecognize(requests(), timeout=60):
                        pass
                except grpc.RpcError:
                    pass

    def dropper():
        second = (np.random.default_rng(1).integers(-3000, 3000, 16000)).astype("<i2").tobytes()
        while not stop.is_set():
            ch = grpc.insecure_channel(address)
            call = pb_grpc.RecognizerStub(ch).StreamingRecognize(
                iter([config(16000)] + [pb.StreamingRecognizeRequest(audio_content=second[i:i + 3200])
                                        for i in range(0, len(second), 3200)]), timeout=30)
            try:
                next(call)
            except (grpc.RpcError, StopIteration):
                pass
            ch.close()                       # gone without a word
            time.sleep(0.2)

    threads = [threading.Thread(target=f, daemon=True)
               for f in [big_sender] * BIG + [trickler] * TRICKLE + [dropper] * DROPPED]
    for t in threads:
        t.start()
    return threads


def _stats(out: dict) -> dict:
    lat = np.array(out.pop("partial_latency") or [np.nan])
    out["errors"] = "; ".join(sorted(set(out["errors"]))[:5])
    return {**out, "partial_latency_s": {"median": round(float(np.median(lat)), 3),
                                         "p95": round(float(np.percentile(lat, 95)), 3), "n": int(lat.size)}}


def _embedded(model: Path, audio: np.ndarray, expected: str) -> dict:
    proc, address = _serve(["--model", str(model), "--chunk-ms", "200", "--right-context-ms", "320",
                            "--idle-timeout", "5"])
    try:
        warm = {"streams": 0, "lost": 0, "wrong": 0, "retries": 0, "errors": [], "partial_latency": []}
        once = threading.Event()
        threading.Timer(2.5, once.set).start()
        _normal(address, audio, expected, warm, once)     # a first stream: sessions and buffers warm
        time.sleep(1.0)
        before = _rss_mb(proc.pid)
        stop, attack_stop = threading.Event(), threading.Event()
        out = {"streams": 0, "lost": 0, "wrong": 0, "retries": 0, "errors": [], "partial_latency": []}
        attackers = _attackers(address, attack_stop)
        normals = [threading.Thread(target=_normal, args=(address, audio, expected, out, stop), daemon=True)
                   for _ in range(NORMAL)]
        for t in normals:
            t.start()
        peak, end = before, time.monotonic() + SOAK_S
        while time.monotonic() < end:
            peak = max(peak, _rss_mb(proc.pid))
            time.sleep(0.25)
        attack_stop.set()
        stop.set()
        for t in normals + attackers:
            t.join(90)
        time.sleep(3.0)
        after = _rss_mb(proc.pid)
        return {**_stats(out), "rss_mb": {"before": round(before), "peak": round(peak), "after": round(after),
                                          "after_vs_before": round(after / before, 3)},
                "attackers": {"big_1mib_messages": BIG, "trickle": TRICKLE, "dropped": DROPPED}}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _triton(model: Path, audio: np.ndarray, expected: str) -> dict:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    import grpc

    proc, address = _serve(["--backend", "triton", "--model", str(model), "--chunk-ms", "200",
                            "--right-context-ms", "320", "--triton-check-interval", "0.5"])
    try:
        def children(pid):
            found = []
            for e in Path("/proc").iterdir():
                if e.name.isdigit():
                    try:
                        stat = (e / "stat").read_text()
                        cmd = (e / "cmdline").read_bytes()
                    except OSError:
                        continue
                    if int(stat[stat.rindex(")") + 2:].split()[1]) == pid and b"tritonserver" in cmd:
                        found.append(int(e.name))
            return found

        def serving():
            try:
                with grpc.insecure_channel(address) as ch:
                    return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status \
                        == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                return False

        stop = threading.Event()
        out = {"streams": 0, "lost": 0, "wrong": 0, "retries": 0, "errors": [], "partial_latency": []}
        normals = [threading.Thread(target=_normal, args=(address, audio, expected, out, stop, time.monotonic() + 300),
                                    daemon=True) for _ in range(NORMAL)]
        for t in normals:
            t.start()
        time.sleep(5.0)
        killed = time.monotonic()
        for pid in children(proc.pid):
            os.kill(pid, signal.SIGKILL)
        while serving() and time.monotonic() - killed < 10:
            time.sleep(0.1)
        while not serving() and time.monotonic() - killed < 180:
            time.sleep(0.2)
        back_s = time.monotonic() - killed
        time.sleep(10.0)
        stop.set()
        for t in normals:
            t.join(90)
        return {**_stats(out), "serving_again_after_s": round(back_s, 1)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv=None) -> dict:
    argv = list(argv or [])
    from tests.conftest import speech_like
    from tests.serve_helpers import tiny_model_dir
    from w2v_serve.transcribe import Transcriber

    model = tiny_model_dir("local")
    audio = speech_like(16000 * 3, seed=1, scale=0.5)
    expected = Transcriber(model).transcribe(audio, sample_rate=16000).text
    result = {"soak_s": SOAK_S,
              "embedded": _embedded(model, audio, expected)}
    if "--skip-triton" not in argv:
        try:
            result["triton"] = _triton(model, audio, expected)
        except RuntimeError as e:
            result["triton"] = {"skipped": str(e)}
    result["load_1min_after"] = round(os.getloadavg()[0], 1)   # the record holds the load before
    return result
