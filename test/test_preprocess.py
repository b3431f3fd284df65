"""save_ros.preprocess: image and vector inputs for a model, without ROS (torch and numpy only)."""

import numpy as np
import pytest
import torch

from save_ros.preprocess import (
    ImageOptions,
    InputError,
    InputSpec,
    RawImage,
    Resize,
    array_to_input,
    check_in_box,
    image_to_input,
    resize,
)

RGB = InputSpec(shape=(3, 4, 4), low=(0.0,) * 3, high=(1.0,) * 3)
GREY = InputSpec(shape=(1, 4, 4), low=(0.0,), high=(1.0,))


def _raw(pixels: np.ndarray, encoding: str, bigendian: bool = False) -> RawImage:
    return RawImage(encoding=encoding, height=pixels.shape[0], width=pixels.shape[1],
                    step=pixels.strides[0], data=np.ascontiguousarray(pixels).tobytes(),
                    is_bigendian=bigendian)


def test_8uc3_is_bgr_and_rgb8_bgr8_agree():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    a = image_to_input(_raw(rgb, "rgb8"), RGB)
    b = image_to_input(_raw(rgb[..., ::-1].copy(), "bgr8"), RGB)
    c = image_to_input(_raw(rgb[..., ::-1].copy(), "8UC3"), RGB)
    assert torch.equal(a, b) and torch.equal(a, c)
    np.testing.assert_allclose(a[0].permute(1, 2, 0).numpy(), rgb / 255.0, rtol=1e-6)


def test_rgba_drops_alpha_and_bgr_model_order_flips():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 7  # pure red, some alpha
    x = image_to_input(_raw(rgba, "rgba8"), RGB)
    assert x[0, 0].eq(1).all() and x[0, 1:].eq(0).all()
    bgr_model = image_to_input(_raw(rgba, "rgba8"), RGB, ImageOptions(channel_order="bgr"))
    assert bgr_model[0, 2].eq(1).all() and bgr_model[0, :2].eq(0).all()
    bgra = rgba[..., [2, 1, 0, 3]].copy()
    assert torch.equal(image_to_input(_raw(bgra, "bgra8"), RGB), x)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_16_bit_scales_by_full_range_big_endian_too(encoding):
    values = np.array([[0, 65535, 32768, 1]] * 4, dtype=np.uint16)
    little = image_to_input(_raw(values, encoding), GREY)
    big = image_to_input(_raw(values.astype(">u2"), encoding, bigendian=True), GREY)
    assert torch.equal(little, big)
    np.testing.assert_allclose(little[0, 0, 0].numpy(), [0, 1, 32768 / 65535, 1 / 65535],
                               rtol=1e-6)


def test_mono_to_rgb_repeats_and_rgb_to_mono_uses_luma():
    grey = np.full((4, 4), 51, dtype=np.uint8)
    x = image_to_input(_raw(grey, "8UC1"), RGB)
    assert torch.allclose(x, torch.full((1, 3, 4, 4), 0.2))
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    assert torch.allclose(image_to_input(_raw(rgb, "rgb8"), GREY), torch.full((1, 1, 4, 4),
                                                                               0.587))


def test_mean_std_normalise_per_channel():
    pixels = np.full((4, 4, 3), 255, dtype=np.uint8)
    opts = ImageOptions(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = image_to_input(_raw(pixels, "rgb8"), RGB, opts)
    expected = [(1 - m) / s for m, s in zip(opts.mean, opts.std, strict=True)]
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(expected))
    low, high = opts.normalised_box(3)
    assert high == pytest.approx(expected) and low[0] == pytest.approx(-0.485 / 0.229)


def test_letterbox_keeps_aspect_and_pads():
    x = torch.ones(1, 1, 2, 8)  # 4:1 wide
    out = resize(x, 8, 8, Resize.LETTERBOX, pad_value=0.5)
    assert out.shape == (1, 1, 8, 8)
    assert out[0, 0, 3:5].eq(1).all()  # the image, 2 rows high, centred
    assert out[0, 0, :3].eq(0.5).all() and out[0, 0, 5:].eq(0.5).all()


def test_center_crop_keeps_aspect_and_cuts_the_sides():
    x = torch.arange(16.0).reshape(1, 1, 2, 8)  # 2 x 8, crop to 2 x 2 from the middle
    out = resize(x, 2, 2, Resize.CENTER_CROP)
    assert torch.equal(out[0, 0], torch.tensor([[3.0, 4.0], [11.0, 12.0]]))


def test_stretch_shrinks_by_area_and_enlarges_bilinearly():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(resize(x, 2, 2, Resize.STRETCH)[0, 0],
                       torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    up = resize(torch.ones(1, 1, 2, 2), 5, 7, Resize.STRETCH)
    assert up.shape == (1, 1, 5, 7) and torch.allclose(up, torch.ones_like(up))


def test_dtype_option_casts_the_input():
    x = image_to_input(_raw(np.zeros((4, 4), np.uint8), "mono8"), GREY,
                       ImageOptions(dtype="float16"))
    assert x.dtype == torch.float16


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (RawImage("yuv422", 4, 4, 8, bytes(32)), "encoding"),
        (RawImage("mono8", 4, 4, 4, bytes(3)), "data"),
        (RawImage("mono8", 0, 4, 4, b""), "size"),
        (RawImage("32FC1", 1, 1, 4, np.array([np.nan], np.float32).tobytes()), "nonfinite"),
    ],
)
def test_bad_images_raise_with_a_kind(raw, kind):
    with pytest.raises(InputError) as err:
        image_to_input(raw, GREY)
    assert err.value.kind == kind


def test_an_input_outside_the_box_is_an_input_error():
    spec = InputSpec(shape=(4,), low=(-1.0,) * 4, high=(1.0,) * 4)
    x = array_to_input([0.0, 0.5, 3e38, -1.0], spec, "state")
    with pytest.raises(InputError, match=r"element 2 is 3e\+38, not in \[-1, 1\]") as err:
        check_in_box(x, spec)
    assert err.value.kind == "out_of_range"
    inside = torch.tensor([[1.0 + 1e-7, -1.0, 0.0, 0.5]])  # rounding is clamped, not refused
    assert check_in_box(inside, spec).max() == 1.0
