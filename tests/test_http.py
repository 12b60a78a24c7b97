"""The HTTP face of ``w2v serve --http-port N`` on 127.0.0.1, driven the way users drive it: the
official ``openai`` SDK against the OpenAI-compatible API, a WebSocket client speaking Vosk's
protocol, and headless Chromium with a fake microphone on the page at ``/``.

One server process (the bundled default model, bearer-token auth, two stream slots, a 1 MiB
upload limit, 30 s of audio at most) serves every test; the reference is ``w2v transcribe`` of the same files with the
same model and decoder, and ``w2v stream``'s gRPC path for the WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.serve_helpers import espeak

openai = pytest.importorskip("openai")
websockets = pytest.importorskip("websockets")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

TOKEN = "http-test-token"
SENTENCES = ("the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore")
# The page's two utterances: ones the bundled model hears the same streamed and offline, whatever
# silence leads them (the fake microphone starts at no fixed point), so the streamed words can be
# held to w2v transcribe's.
PAGE_SENTENCES = ("the weather is nice today", "turn left at the next corner")
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "docs" / "images" / "http_page.png"


def _python_env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               W2V_NO_PROGRESS="1")
    env.pop("W2V_AUTH_TOKEN", None)
    return env


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> dict:
    """Spoken WAV (espeak-ng's 22.05 kHz) and FLAC (16 kHz, stereo) files."""
    d = tmp_path_factory.mktemp("http-audio")
    wav = espeak(SENTENCES[0], d / "fox.wav")
    spoken = espeak(SENTENCES[1], d / "shells-22k.wav")
    data, rate = sf.read(str(spoken), dtype="float32")
    import soxr

    mono = soxr.resample(data, rate, 16000)
    flac = d / "shells.flac"
    sf.write(str(flac), np.stack([mono, mono * 0.8], axis=1), 16000, format="FLAC")
    return {"wav": wav, "flac": flac}


@pytest.fixture(scope="module")
def reference(audio_files) -> dict:
    """``w2v transcribe --format jsonl`` of every file: kind -> {text, words, duration_s}."""
    paths = [str(audio_files[k]) for k in ("wav", "flac")]
    out = subprocess.run([sys.executable, "-m", "w2v_serve.cli", "transcribe", *paths, "--format", "jsonl"],
                         capture_output=True, text=True, env=_python_env(), timeout=300, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return dict(zip(("wav", "flac"), rows))


class _Server:
    def __init__(self, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "w2v_serve.cli", "serve", "--port", "0", "--http-port", "0",
             "--auth-token", TOKEN, "--max-streams", "2", "--max-upload-mb", "1", "--max-stream-seconds", "30", "--idle-timeout", "20", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_python_env())
        self.log: list[str] = []
        self.http_port = self.grpc_port = None
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.log.append(line)
                if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                    self.grpc_port = int(m.group(1))
                if m := re.search(r"HTTP on http://127\.0\.0\.1:(\d+)", line):
                    self.http_port = int(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(180) or self.http_port is None:
            self.stop()
            raise RuntimeError("w2v serve --http-port did not start:\n" + "".join(self.log))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.stop()
    assert s.proc.returncode == 0, "".join(s.log)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, max_retries=0, timeout=120)


def transcribe(client, path: Path, **kwargs):
    with open(path, "rb") as f:
        return client.audio.transcriptions.create(model="default", file=f, **kwargs)


def cue_text(subtitles: str) -> str:
    """The text lines of SRT or WebVTT (not the header, counters or timings)."""
    lines = [ln for ln in subtitles.splitlines() if ln.strip() and ln != "WEBVTT" and "-->" not in ln
             and not ln.strip().isdigit()]
    return " ".join(lines)


def assert_monotone(words, duration: float) -> None:
    assert words
    previous_end = 0.0
    for w in words:
        assert previous_end - 1e-6 <= w.start <= w.end <= duration + 1e-6, words
        previous_end = w.end


# ---------------------------------------------------------------------------- the OpenAI API
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wav", "flac"])
def test_every_response_format_equals_w2v_transcribe(client, audio_files, reference, kind):
    ref = reference[kind]
    assert ref["text"], "the bundled model heard nothing: the comparison would be empty"
    path = audio_files[kind]
    for fmt in FORMATS:
        if fmt == "verbose_json":
            r = transcribe(client, path, response_format=fmt, timestamp_granularities=["word", "segment"])
            assert r.text == ref["text"]
            assert r.duration == pytest.approx(ref["duration_s"], abs=2e-3)
            assert [w.word for w in r.words] == [w["word"] for w in ref["words"]]
            for ours, theirs in zip(r.words, ref["words"]):
                assert (ours.start, ours.end) == pytest.approx((theirs["start_s"], theirs["end_s"]), abs=1e-3)
            assert_monotone(r.words, r.duration)
            assert " ".join(s.text for s in r.segments) == ref["text"]
            assert [s.id for s in r.segments] == list(range(len(r.segments)))
            assert all(s.start <= s.end for s in r.segments)
            assert r.language == "en"
        elif fmt == "json":
            assert transcribe(client, path).text == ref["text"]          # response_format left out
            assert transcribe(client, path, response_format="json", temperature=0.7).text == ref["text"]
        elif fmt == "text":
            assert transcribe(client, path, response_format="text").strip() == ref["text"]
        else:
            body = transcribe(client, path, response_format=fmt)
            assert body.startswith("WEBVTT\n\n" if fmt == "vtt" else "1\n00:00:0")
            assert cue_text(body) == ref["text"]


@pytest.mark.slow
def test_verbose_json_without_word_granularity_has_segments_only(client, audio_files, reference):
    r = transcribe(client, audio_files["wav"], response_format="verbose_json")
    assert r.text == reference["wav"]["text"] and r.segments and r.words is None


@pytest.mark.slow
def test_stream_true_sends_the_sdks_server_sent_events(client, audio_files, reference):
    with open(audio_files["wav"], "rb") as f:
        events = list(client.audio.transcriptions.create(model="default", file=f, stream=True))
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and set(kinds[:-1]) == {"transcript.text.delta"}
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == reference["wav"]["text"]


def test_models_lists_the_served_models(client):
    assert [m.id for m in client.models.list().data] == ["default"]


def test_unknown_model_is_404_in_openais_error_shape(client, audio_files):
    with open(audio_files["wav"], "rb") as f, pytest.raises(openai.NotFoundError) as e:
        client.audio.transcriptions.create(model="whisper-1", file=f)
    error = e.value.body
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "model_not_found" and error["param"] == "model" and "default" in error["message"]


def test_wrong_or_missing_key_is_401_and_the_server_keeps_serving(server, client, audio_files, reference):
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="not-the-token", max_retries=0)
    with open(audio_files["wav"], "rb") as f, pytest.raises(openai.AuthenticationError) as e:
        wrong.audio.transcriptions.create(model="default", file=f)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    # No Authorization header at all (what curl sends without -H).
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url + "/v1/models", timeout=10)
    assert e.value.code == 401 and json.loads(e.value.read())["error"]["code"] == "invalid_api_key"
    assert transcribe(client, audio_files["flac"]).text == reference["flac"]["text"]


def test_corrupt_file_is_400_and_the_server_keeps_serving(client, audio_files, reference, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    good = audio_files["wav"].read_bytes()
    corrupt.write_bytes(good[:44] + bytes(range(256)) * 4)       # a WAV header over noise, cut short
    for path in (corrupt, tmp_path / "notes.txt"):
        if not path.exists():
            path.write_text("these are not audio samples\n")
        with pytest.raises(openai.BadRequestError) as e:
            transcribe(client, path)
        assert e.value.status_code == 400
        assert e.value.body["code"] == "invalid_audio" and e.value.body["param"] == "file"
        assert path.name in e.value.body["message"]
    assert transcribe(client, audio_files["wav"]).text == reference["wav"]["text"]


def test_bad_form_values_are_400_naming_the_parameter(client, audio_files):
    for kwargs, param in (({"response_format": "yaml"}, "response_format"),
                          ({"timestamp_granularities": ["sentence"]}, "timestamp_granularities"),
                          ({"language": "fr"}, "language"),
                          ({"prompt": " ".join(f"word{i}" for i in range(300))}, "prompt")):
        with pytest.raises(openai.BadRequestError) as e:
            transcribe(client, audio_files["wav"], **kwargs)
        assert e.value.body["param"] == param, e.value.body


def test_prompt_words_are_hotwords_and_metrics_count_http(server, client, audio_files, reference):
    """A prompt is taken (its words boost the beam search; the bundled model already hears this
    file right, so the text stays); /metrics on the HTTP port counts the HTTP audio and errors."""
    r = transcribe(client, audio_files["wav"], prompt="Quick, brown; fox.", language="en")
    assert r.text == reference["wav"]["text"]
    with pytest.raises(openai.BadRequestError):
        transcribe(client, audio_files["wav"], response_format="yaml")
    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    seconds = re.search(r'^w2v_audio_seconds_total\{rpc="http"\} (\S+)$', text, re.M)
    assert seconds and float(seconds.group(1)) > 0
    assert re.search(r'^w2v_errors_total\{code="INVALID_ARGUMENT"\} [1-9]', text, re.M)


def test_upload_over_the_limit_is_413(client, tmp_path):
    big = tmp_path / "big.wav"
    sf.write(str(big), np.zeros(16000 * 40, np.int16), 16000, subtype="PCM_16")   # 1.2 MiB > --max-upload-mb 1
    with pytest.raises(openai.APIStatusError) as e:
        transcribe(client, big)
    assert e.value.status_code == 413 and e.value.body["code"] == "file_too_large"


def test_audio_over_the_duration_limit_is_413(client, tmp_path):
    long = tmp_path / "long.flac"
    sf.write(str(long), np.zeros(16000 * 31, np.int16), 16000, format="FLAC")     # small file, 31 s > 30 s
    assert long.stat().st_size < 1 << 20
    with pytest.raises(openai.APIStatusError) as e:
        transcribe(client, long)
    assert e.value.status_code == 413 and e.value.body["code"] == "audio_too_long"
    assert "--max-stream-seconds" in e.value.body["message"]


def test_over_the_stream_limit_is_429(server, client, audio_files):
    """Two WebSockets hold the server's two stream slots (--max-streams, shared with gRPC)."""
    async def hold_two_then_ask():
        url = f"ws://127.0.0.1:{server.http_port}/ws?token={TOKEN}"
        async with websockets.connect(url) as a, websockets.connect(url) as b:
            for ws in (a, b):
                await ws.send(json.dumps({"config": {"sample_rate": 16000}}))
                await ws.send(np.zeros(1600, "<i2").tobytes())
                assert "partial" in json.loads(await ws.recv())
            with open(audio_files["wav"], "rb") as f:
                with pytest.raises(openai.RateLimitError) as e:
                    await asyncio.to_thread(client.audio.transcriptions.create, model="default", file=f)
            assert e.value.body["code"] == "rate_limit_exceeded"
            async with websockets.connect(url) as c:           # a third stream: refused with 1013
                assert "error" in json.loads(await c.recv())
                await c.wait_closed()
                assert c.close_code == 1013
    asyncio.run(hold_two_then_ask())


# ---------------------------------------------------------------------------- WebSocket (Vosk's protocol)
async def vosk_stream(url: str, path: Path, chunk_s: float = 0.2) -> list[dict]:
    """Vosk's own client loop: config, then each chunk followed by one reply, then eof."""
    data, rate = sf.read(str(path), dtype="int16", always_2d=True)
    pcm = data[:, 0]
    replies = []
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"config": {"sample_rate": rate}}))
        step = int(rate * chunk_s)
        for i in range(0, len(pcm), step):
            await ws.send(pcm[i:i + step].tobytes())
            replies.append(json.loads(await ws.recv()))
        await ws.send('{"eof" : 1}')
        replies.append(json.loads(await ws.recv()))
        await ws.wait_closed()
        assert ws.close_code == 1000
    return replies


@pytest.mark.slow
def test_websocket_speaks_vosk_and_matches_the_grpc_stream(server, audio_files):
    from w2v_serve.service.client import RecognizerClient, final_text

    path = audio_files["wav"]
    replies = asyncio.run(vosk_stream(f"ws://127.0.0.1:{server.http_port}/ws?token={TOKEN}", path))
    n_chunks = -(-sf.info(str(path)).frames // int(sf.info(str(path)).samplerate * 0.2))
    assert len(replies) == n_chunks + 1                       # one reply per message
    assert any(r.get("partial") for r in replies), "no partial text while the audio played"
    finals = [r for r in replies if "result" in r]
    text = " ".join(r["text"] for r in finals if r["text"])
    words = [w for r in finals for w in r["result"]]
    assert [w["word"] for w in words] == text.split()
    ends = [0.0] + [w["end"] for w in words]
    assert all(ends[i] <= w["start"] <= w["end"] for i, w in enumerate(words))
    with RecognizerClient(f"127.0.0.1:{server.grpc_port}", token=TOKEN) as grpc_client:
        assert text == final_text(grpc_client.stream_file(path, chunk_ms=200))


def test_websocket_refuses_a_wrong_token_and_bad_messages(server):
    async def run():
        base = f"ws://127.0.0.1:{server.http_port}/ws"
        async with websockets.connect(base + "?token=nope") as ws:
            assert json.loads(await ws.recv())["error"]["code"] == "invalid_api_key"
            await ws.wait_closed()
            assert ws.close_code == 1008
        async with websockets.connect(base, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            await ws.send("not json")
            assert "JSON" in json.loads(await ws.recv())["error"]["message"]
            await ws.wait_closed()
            assert ws.close_code == 1007
        async with websockets.connect(base + f"?token={TOKEN}&model=nope") as ws:
            await ws.send(np.zeros(160, "<i2").tobytes())
            assert json.loads(await ws.recv())["error"]["code"] == "model_not_found"
    asyncio.run(run())


def test_page_and_its_assets_are_served_without_a_cdn(server):
    html = urllib.request.urlopen(server.url + "/", timeout=10).read().decode()
    for element in ('id="start"', 'id="stop"', 'id="transcript"', 'id="model"', 'id="token"', 'id="drop"'):
        assert element in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/static/") for a in assets)
    for asset in assets + ["/static/pcm-worklet.js"]:
        body = urllib.request.urlopen(server.url + asset, timeout=10).read().decode()
        assert "http://" not in body and "https://" not in body, asset


# ---------------------------------------------------------------------------- the page, in Chromium
def _chromium():
    webdriver = pytest.importorskip("selenium.webdriver")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make sysdeps installs them)")
    return webdriver, browser, driver


@pytest.mark.slow
def test_page_streams_the_microphone_into_the_transcript(server, tmp_path):
    """Chromium's fake microphone plays a spoken WAV (padded with silence: with %noloop the
    device repeats the file's last 10 ms); #start, wait, #stop; #transcript then holds the
    file's words as w2v transcribe hears them (cut points may differ). The same file given to
    the page's file input comes back through the OpenAI endpoint with the same words."""
    webdriver, browser, driver_path = _chromium()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    first = espeak(PAGE_SENTENCES[0], tmp_path / "one.wav")
    second = espeak(PAGE_SENTENCES[1], tmp_path / "two.wav")
    a, rate = sf.read(str(first), dtype="float32")
    b, _ = sf.read(str(second), dtype="float32")
    silence = lambda s: np.zeros(int(rate * s), np.float32)          # noqa: E731
    speech = np.concatenate([silence(0.3), a, silence(1.2), b])
    mic = tmp_path / "mic.wav"
    sf.write(str(mic), np.concatenate([speech, silence(2.5)]), rate, subtype="PCM_16")
    expected = subprocess.run([sys.executable, "-m", "w2v_serve.cli", "transcribe", str(mic)],
                              capture_output=True, text=True, env=_python_env(), timeout=300, check=True).stdout.split()
    assert expected

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic}%noloop",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1100,440"):
        options.add_argument(flag)
    browser_driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser_driver.get(server.url + "/")
        find = lambda i: browser_driver.find_element(By.ID, i)               # noqa: E731
        token = find("token")
        token.clear()
        token.send_keys(TOKEN)
        browser_driver.execute_script("document.getElementById('token').dispatchEvent(new Event('change'))")
        WebDriverWait(browser_driver, 20).until(lambda d: find("model").get_attribute("value") == "default")
        assert find("transcript").get_attribute("textContent") == ""
        find("start").click()
        WebDriverWait(browser_driver, 20).until(lambda d: find("stop").is_enabled())
        partials = set()
        deadline = time.monotonic() + len(speech) / rate + 2.0
        while time.monotonic() < deadline:
            partials.add(find("partial").text)
            time.sleep(0.1)
        assert partials - {""}, "no partial text showed while the audio played"
        find("stop").click()
        WebDriverWait(browser_driver, 30).until(lambda d: find("start").is_enabled())
        transcript = find("transcript")
        heard = transcript.get_attribute("textContent").split()
        assert transcript.text.split() == heard                   # rendered: the times are not in the text
        assert heard == expected, (heard, expected)
        lines = transcript.find_elements(By.TAG_NAME, "div")
        assert len(lines) >= 2 and all(re.fullmatch(r"\d+:\d\d\.\d\d–\d+:\d\d\.\d\d", ln.get_attribute("data-time"))
                                       for ln in lines)
        # The file drop: the same recording through the OpenAI endpoint, shown as timed segments.
        find("file").send_keys(str(mic))
        WebDriverWait(browser_driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#file-result .segment"))
        segments = browser_driver.find_elements(By.CSS_SELECTOR, "#file-result .segment")
        assert " ".join(s.text for s in segments).split() == expected
        shot = SCREENSHOT if os.environ.get("W2V_UPDATE_SCREENSHOT") else tmp_path / "http_page.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        tmp = shot.with_name(shot.name + ".tmp.png")
        assert browser_driver.save_screenshot(str(tmp))
        os.replace(tmp, shot)
    finally:
        browser_driver.quit()


# ---------------------------------------------------------------------------- the Triton backend
@pytest.mark.slow
def test_triton_backend_answers_the_sdk_and_the_websocket(audio_files, reference):
    """``w2v serve --backend triton --http-port``: a local tritonserver runs the bundled model;
    the OpenAI API's transcript is still w2v transcribe's, the WebSocket streams through Triton."""
    pytest.importorskip("tritonclient.grpc")
    from w2v_serve.triton.launcher import TritonError, locate_tritonserver

    try:
        locate_tritonserver()
    except TritonError as e:
        pytest.skip(f"no tritonserver in this installation: {e}")
    s = _Server("--backend", "triton")
    try:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=TOKEN, max_retries=0, timeout=120)
        for kind in ("wav", "flac"):
            assert transcribe(client, audio_files[kind]).text == reference[kind]["text"]
        r = transcribe(client, audio_files["wav"], response_format="verbose_json", timestamp_granularities=["word"])
        assert_monotone(r.words, r.duration)
        replies = asyncio.run(vosk_stream(f"ws://127.0.0.1:{s.http_port}/ws?token={TOKEN}", audio_files["wav"]))
        assert replies[-1]["text"] is not None and any("result" in r for r in replies)
    finally:
        s.stop()
    assert s.proc.returncode == 0, "".join(s.log)
