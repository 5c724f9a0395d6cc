"""benchmarks/quant_mel.py: the log-mel front end computes Whisper's features, and its clips are
deterministic audio in range."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks import quant_cases as qc
from benchmarks import quant_mel as qm


def _numpy_logmel(x: np.ndarray) -> np.ndarray:
    """The same features from numpy's FFT: centred frames, periodic Hann window, power,
    Slaney mel filters, log10 clipped 8 decades under the peak, scaled."""
    padded = np.pad(x.astype(np.float64), (qm.N_FFT // 2, qm.N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, qm.N_FFT)[:: qm.HOP]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(qm.N_FFT) / qm.N_FFT)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)).T ** 2
    log = np.log10(np.maximum(qm.mel_filters().astype(np.float64) @ power, 1e-10))
    return (np.maximum(log, log.max() - 8.0) + 4.0) / 4.0


def test_front_end_matches_numpy_stft_log_mel(tmp_path):
    path = qm.build(tmp_path / "mel.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed in (0, 1, 6):  # speech, tones, a loud clip
        x = qm.clip(seed)
        got = s.run(None, {qm.INPUT: x})[0]
        assert got.shape == (1, qm.N_MELS, qm.SAMPLES // qm.HOP + 1)
        np.testing.assert_allclose(got[0], _numpy_logmel(x[0]), atol=1e-4)


def test_mel_filters_are_unit_area_triangles_over_the_spectrum():
    w = qm.mel_filters()
    assert w.shape == (qm.N_MELS, qm.N_FFT // 2 + 1) and (w >= 0).all()
    hz = np.linspace(0, qm.RATE / 2, qm.N_FFT // 2 + 1)
    peaks = hz[w.argmax(axis=1)]
    assert (np.diff(peaks) >= 0).all()  # the bands climb the spectrum in order
    # Slaney's norm: each triangle's area (in Hz) is 1
    np.testing.assert_allclose((w * (hz[1] - hz[0])).sum(axis=1)[5:], 1.0, rtol=0.1)


def test_clips_are_deterministic_audio_at_many_levels():
    a, b = qm.clip(3), qm.clip(3)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (1, qm.SAMPLES)
    peaks = [20 * np.log10(np.abs(qm.clip(s)).max()) for s in range(12)]
    assert max(peaks) <= 0.0 and max(peaks) - min(peaks) > 15  # loud and quiet clips
    assert not np.array_equal(qm.clip(0), qm.clip(1))


def test_melspec_is_a_case_of_the_benchmark():
    assert "melspec" in qc.ALL and "melspec" in qc.AUDIO
