// Copies the microphone's samples (channel 0, float32 at the AudioContext's rate) to the page.
class PcmCapture extends AudioWorkletProcessor {
  process(inputs) {
    const input = inputs[0];
    if (input && input.length && input[0].length) this.port.postMessage(input[0].slice(0));
    return true;
  }
}
registerProcessor("pcm-capture", PcmCapture);
