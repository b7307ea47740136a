"""The colour ops of a finished view in DALI CPU mode: the float path matches the uint8 one."""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from selfsup.pipeline.augment import color_twist, jitter_parameters, separable_gaussian_blur, solarize
from selfsup.pipeline.recipes import ViewSpec

BATCH = 8


def images():
    """Colour noise with saturated and dark corners, so strong jitter reaches both bounds."""
    rng = np.random.default_rng(3)
    batch = []
    for _ in range(BATCH):
        image = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
        image[:4, :4] = 255
        image[-4:, -4:] = 0
        batch.append(image)
    return batch


def run(graph):
    pipeline = pipeline_def(graph, batch_size=BATCH, num_threads=1, device_id=None, seed=7)()
    pipeline.build()
    return [[np.array(output.at(index)) for index in range(BATCH)] for output in pipeline.run()]


def test_float_colour_twist_matches_the_uint8_one_and_is_clamped():
    view = ViewSpec(size=32, jitter_probability=1.0, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.1,
                    grayscale_probability=0.3)

    def graph():
        pixels = fn.external_source(source=images, batch=True, layout="HWC")
        parameters = jitter_parameters(view)  # one draw, applied both ways
        return color_twist(pixels, parameters, types.UINT8), color_twist(pixels, parameters, types.FLOAT)

    as_uint8, as_float = run(graph)
    originals = images()
    for original, byte_view, float_view in zip(originals, as_uint8, as_float):
        assert float_view.dtype == np.float32 and byte_view.dtype == np.uint8
        assert float_view.min() >= 0.0 and float_view.max() <= 255.0
        assert np.abs(float_view - byte_view.astype(np.float32)).max() <= 0.51  # uint8 rounds
        assert not np.array_equal(byte_view, original)  # the jitter did something
    every_value = np.concatenate([view.reshape(-1) for view in as_float])
    assert (every_value == 255.0).any() and (every_value == 0.0).any()  # clamped, not wrapped or overshot


def test_float_solarize_matches_the_uint8_one():
    def graph():
        pixels = fn.external_source(source=images, batch=True, layout="HWC")
        return solarize(pixels), solarize(fn.cast(pixels, dtype=types.FLOAT), floating=True)

    as_uint8, as_float = run(graph)
    for original, byte_view, float_view in zip(images(), as_uint8, as_float):
        expected = np.where(original >= 128, 255 - original, original)
        assert np.array_equal(byte_view, expected)
        assert np.array_equal(float_view, expected.astype(np.float32))


def test_separable_blur_matches_dali_gaussian_blur():
    def graph():
        pixels = fn.cast(fn.external_source(source=images, batch=True, layout="HWC"), dtype=types.FLOAT)
        sigma = fn.random.uniform(range=[0.3, 2.0])
        return pixels, separable_gaussian_blur(pixels, sigma, 2.0), fn.gaussian_blur(pixels, sigma=sigma)

    originals, separable, reference = run(graph)
    for original, mine, theirs in zip(originals, separable, reference):
        assert mine.dtype == np.float32 and mine.shape == original.shape
        assert np.abs(mine - theirs).max() < 0.5  # DALI's window ends at 3 sigma, this one at 3 * max sigma
        assert mine.std() < 0.9 * original.std()  # it blurred

