"""A log-mel spectrogram front end, the audio model of the quantization benchmark.

Whisper's feature extractor, written with ``onnx.helper`` (opset 17) as exporters write an STFT
that onnxruntime's int8 kernels can run: 16 kHz audio ``[1, N]`` is reflect-padded by half a
window, a Conv1d whose 402 kernels are the Hann-windowed cosines and sines of a 400-point DFT
(hop 160) gives the real and imaginary parts, their squares add up to the power spectrum
(201 bins), a MatMul by 80 triangular mel filters (Slaney scale, area-normalized, as librosa and
Whisper) maps it to mel bands, and ``log10(max(mel, 1e-10))`` is clipped to 8 decades below the
clip's peak and scaled, ``(max(l, max(l) - 8) + 4) / 4``. Output ``logmel`` ``[1, 80, T]``.

The weights are the transform itself (nothing to train); the int8 question is the one the
front end poses: the power spectrum spans ten decades before the logarithm, and the quiet
bands are where rounding shows. Audio: 5 s clips synthesized here (no download), with a seed
each: voiced speech-like sound (a gliding pitch with its harmonics shaped by three formants and
syllable-like bursts), fricative noise, plucked and held tones, background noise and silence,
at levels from -45 to -3 dBFS. Metric: cosine between the fp32 and the quantized log-mel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
SECONDS = 5
SAMPLES = RATE * SECONDS
INPUT, OUTPUT = "audio", "logmel"


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default)."""
    f = np.asarray(f, np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


def mel_filters() -> np.ndarray:
    """[80, 201] triangular filters from 0 to 8 kHz, each scaled to unit area (Slaney norm)."""
    fft_hz = np.linspace(0, RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(RATE / 2), N_MELS + 2))
    lower = (fft_hz[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    upper = (edges[2:, None] - fft_hz[None, :]) / np.diff(edges)[1:, None]
    w = np.maximum(0.0, np.minimum(lower, upper))
    w *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return w.astype(np.float32)


def dft_kernels() -> np.ndarray:
    """[402, 1, 400]: the periodic Hann window times cos, then times -sin, of each DFT bin."""
    n = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)
    k = np.arange(N_FFT // 2 + 1)[:, None]
    angle = 2 * np.pi * k * n[None, :] / N_FFT
    kern = np.concatenate([window * np.cos(angle), -window * np.sin(angle)])
    return kern[:, None, :].astype(np.float32)


def build(path: Path) -> Path:
    """Write the front end to ``path`` (if absent) and return it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if path.is_file():
        return path
    bins = N_FFT // 2 + 1
    inits = [
        numpy_helper.from_array(dft_kernels(), "stft.weight"),
        numpy_helper.from_array(mel_filters(), "mel.filters"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(
            np.array([0, 0, N_FFT // 2, 0, 0, N_FFT // 2], np.int64), "center.pads"
        ),
        numpy_helper.from_array(np.array([bins, bins], np.int64), "re_im"),
        numpy_helper.from_array(np.array(1e-10, np.float32), "floor"),
        numpy_helper.from_array(np.array(1 / np.log(10), np.float32), "to_log10"),
        numpy_helper.from_array(np.array(8.0, np.float32), "decades"),
        numpy_helper.from_array(np.array(4.0, np.float32), "four"),
        numpy_helper.from_array(np.array(0.25, np.float32), "quarter"),
    ]
    nodes = [
        helper.make_node("Unsqueeze", [INPUT, "axis1"], ["x3"], name="Unsqueeze"),
        helper.make_node("Pad", ["x3", "center.pads"], ["padded"], mode="reflect", name="Pad"),
        helper.make_node(
            "Conv", ["padded", "stft.weight"], ["spec"], strides=[HOP], name="stft.Conv"
        ),
        helper.make_node("Split", ["spec", "re_im"], ["re", "im"], axis=1, name="Split"),
        helper.make_node("Mul", ["re", "re"], ["re2"], name="re.Mul"),
        helper.make_node("Mul", ["im", "im"], ["im2"], name="im.Mul"),
        helper.make_node("Add", ["re2", "im2"], ["power"], name="power.Add"),
        helper.make_node("MatMul", ["mel.filters", "power"], ["mel"], name="mel.MatMul"),
        helper.make_node("Max", ["mel", "floor"], ["mel_floor"], name="floor.Max"),
        helper.make_node("Log", ["mel_floor"], ["ln"], name="Log"),
        helper.make_node("Mul", ["ln", "to_log10"], ["log10"], name="log10.Mul"),
        helper.make_node("ReduceMax", ["log10"], ["peak"], keepdims=1, name="ReduceMax"),
        helper.make_node("Sub", ["peak", "decades"], ["low"], name="Sub"),
        helper.make_node("Max", ["log10", "low"], ["clipped"], name="clip.Max"),
        helper.make_node("Add", ["clipped", "four"], ["shifted"], name="Add"),
        helper.make_node("Mul", ["shifted", "quarter"], [OUTPUT], name="scale.Mul"),
    ]
    frames = SAMPLES // HOP + 1
    graph = helper.make_graph(
        nodes,
        "log_mel_front_end",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, SAMPLES])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, N_MELS, frames])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# ------------------------------------------------------------------------------------------
# audio


def _envelope(rng: np.random.Generator, n: int) -> np.ndarray:
    """Syllable-like bursts: a sum of raised-cosine bumps of 80-300 ms."""
    env = np.zeros(n)
    t = 0
    while t < n:
        length = int(rng.uniform(0.08, 0.3) * RATE)
        gap = int(rng.uniform(0.02, 0.25) * RATE)
        bump = np.sin(np.linspace(0, np.pi, length)) ** 2 * rng.uniform(0.3, 1.0)
        end = min(n, t + length)
        env[t:end] += bump[: end - t]
        t += length + gap
    return env


def _voiced(rng: np.random.Generator, n: int) -> np.ndarray:
    """A gliding pitch (90-260 Hz) with harmonics up to 7 kHz, shaped by three formants."""
    f0 = np.exp(np.linspace(np.log(rng.uniform(90, 260)), np.log(rng.uniform(90, 260)), n))
    f0 *= 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(3, 7) * np.arange(n) / RATE)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    formants = [
        (rng.uniform(300, 900), 80),
        (rng.uniform(900, 2500), 120),
        (rng.uniform(2500, 3500), 200),
    ]
    out = np.zeros(n)
    for k in range(1, 60):
        fk = k * f0
        gain = sum(1.0 / (1.0 + ((fk - f) / bw) ** 2) for f, bw in formants) / k**0.5
        gain = np.where(fk < 7000, gain, 0.0)
        out += gain * np.sin(k * phase)
    return out * _envelope(rng, n)


def _fricative(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise bursts, high-passed by differencing (s, f, sh)."""
    noise = np.diff(rng.standard_normal(n + 1))
    return 0.3 * noise * (_envelope(rng, n) > 0.6)


def _tones(rng: np.random.Generator, n: int) -> np.ndarray:
    """Plucked or held notes (a few partials each) with attack-decay envelopes."""
    t = np.arange(n) / RATE
    out = np.zeros(n)
    for _ in range(rng.integers(2, 7)):
        start = rng.uniform(0, SECONDS * 0.8)
        f = 110.0 * 2 ** (rng.integers(0, 36) / 12)
        decay = rng.uniform(0.2, 2.0)
        dt = np.maximum(t - start, 0.0)
        env = np.where(t >= start, np.exp(-dt / decay) * (1 - np.exp(-dt / 0.005)), 0.0)
        for k, a in ((1, 1.0), (2, 0.5), (3, 0.25), (5, 0.1)):
            out += a * env * np.sin(2 * np.pi * f * k * t + rng.uniform(0, 2 * np.pi))
    return out


def clip(seed: int) -> np.ndarray:
    """One 5 s clip [1, 80000] (float32 in [-1, 1]) of seed ``seed``."""
    rng = np.random.default_rng(seed)
    n = SAMPLES
    kind = seed % 4
    if kind == 0:
        sig = _voiced(rng, n) + _fricative(rng, n)
    elif kind == 1:
        sig = _tones(rng, n)
    elif kind == 2:
        sig = _voiced(rng, n) + 0.5 * _tones(rng, n)
    else:  # speech with long pauses
        sig = (_voiced(rng, n) + _fricative(rng, n)) * (np.arange(n) % (2 * RATE) < RATE)
    sig = sig / (np.max(np.abs(sig)) + 1e-9)
    level = 10 ** (rng.uniform(-45, -3) / 20)
    background = 10 ** (rng.uniform(-75, -45) / 20) * rng.standard_normal(n)
    x = level * sig + background
    return np.clip(x, -1, 1).astype(np.float32)[None, :]


def runs(start: int, n: int) -> list[dict[str, np.ndarray]]:
    """Feeds of the clips with seeds ``start`` .. ``start + n - 1``."""
    return [{INPUT: clip(s)} for s in range(start, start + n)]
