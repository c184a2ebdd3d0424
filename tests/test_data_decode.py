"""Decoding any image to RGB, bad bytes to a skip reason, and the shared image protocol (transforms)."""
import io
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from latentae.data import ALPHA_BACKGROUND, SkipCounter, SkipSample, decode_image, prepare_image
from latentae.data.decode import open_image
from latentae.data.transforms import resize_crop, shorter_side_size, to_pil, to_tensor

MAX = 10_000_000


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB); arr is [H, W] or [H, W, 3]."""
    arr = arr if arr.ndim == 3 else arr[..., None]
    h, w, c = arr.shape

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2}[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def rgb_noise(w=12, h=10, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def palette_image(transparent: bool) -> Image.Image:
    img = Image.new("P", (12, 10), 1)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(0, (0, 0, 6, 10))
    if transparent:
        img.info["transparency"] = 0
    return img


CASES = {
    "grayscale": lambda: encode(Image.new("L", (12, 10), 77), "PNG"),
    "1-bit": lambda: encode(Image.new("1", (12, 10), 1), "PNG"),
    "rgba": lambda: encode(Image.new("RGBA", (12, 10), (10, 200, 30, 128)), "PNG"),
    "la": lambda: encode(Image.new("LA", (12, 10), (50, 0)), "PNG"),
    "cmyk-jpeg": lambda: encode(Image.new("CMYK", (12, 10), (0, 255, 0, 0)), "JPEG"),
    "gray-16bit": lambda: png16(np.full((10, 12), 40000, np.uint16)),
    "rgb-16bit": lambda: png16(np.full((10, 12, 3), 65535, np.uint16)),
    "palette": lambda: encode(palette_image(False), "PNG"),
    "palette-transparent": lambda: encode(palette_image(True), "PNG"),
    "webp": lambda: encode(rgb_noise(), "WEBP"),
    "webp-alpha": lambda: encode(Image.new("RGBA", (12, 10), (0, 0, 0, 0)), "WEBP", lossless=True),
    "gif": lambda: encode(palette_image(True), "GIF"),
    "bmp": lambda: encode(rgb_noise(), "BMP"),
    "tiff-float": lambda: encode(Image.fromarray(np.full((10, 12), 0.5, np.float32)), "TIFF"),
    "jpeg": lambda: encode(rgb_noise(), "JPEG"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_mode_becomes_a_3_channel_tensor_in_range(name):
    img = decode_image(CASES[name](), max_pixels=MAX)
    assert img.mode == "RGB" and img.size == (12, 10)
    t = prepare_image(img, 8)
    assert t.shape == (3, 8, 8) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1


def test_mode_conversions_give_the_expected_colours():
    def pixel(name, xy=(0, 0)):
        return decode_image(CASES[name](), max_pixels=MAX).getpixel(xy)

    assert pixel("grayscale") == (77, 77, 77)
    assert pixel("gray-16bit") == (156, 156, 156)  # 40000 / 65535 * 255 = 155.6
    assert pixel("rgb-16bit") == (255, 255, 255)
    assert pixel("cmyk-jpeg")[1] < 30 and min(pixel("cmyk-jpeg")[0], pixel("cmyk-jpeg")[2]) > 225  # magenta
    assert pixel("la") == ALPHA_BACKGROUND  # fully transparent
    assert pixel("webp-alpha") == ALPHA_BACKGROUND
    assert pixel("palette") == (255, 0, 0) and pixel("palette", (8, 0)) == (0, 0, 255)
    assert pixel("palette-transparent") == ALPHA_BACKGROUND and pixel("palette-transparent", (8, 0)) == (0, 0, 255)
    assert pixel("gif") == ALPHA_BACKGROUND
    r, g, b = pixel("rgba")  # half-transparent green over white
    assert abs(r - (10 + 255) / 2) <= 1 and abs(g - (200 + 255) / 2) <= 1 and abs(b - (30 + 255) / 2) <= 1
    assert pixel("tiff-float") == (128, 128, 128)  # float in [0, 1]: 0.5 * 255 = 127.5


def float_tiff(arr) -> bytes:
    return encode(Image.fromarray(np.asarray(arr, np.float32).reshape(2, -1)), "TIFF")


def pgm16(value: int) -> bytes:
    return b"P5 4 2 65535\n" + np.full((2, 4), value, ">u2").tobytes()


HIGH_DEPTH = {  # name: (bytes, mode Pillow opens it as, expected 8-bit values)
    "float-unit": (float_tiff([0, 0.25, 0.5, 1, 0.2, 0.6, 0.999, 0.001]), "F", [0, 64, 128, 255, 51, 153, 255, 0]),
    "float-unit-clipped": (float_tiff([-0.5, np.nan, 0.5, 1, 0, 0, 0, 0]), "F", [0, 0, 128, 255, 0, 0, 0, 0]),
    "float-8bit": (float_tiff([0, 77, 254.6, 255, 2, 1, 0, 0]), "F", [0, 77, 255, 255, 2, 1, 0, 0]),
    "float-16bit": (float_tiff([0, 40000, 65535, 70000, 256, 0, 0, 0]), "F", [0, 156, 255, 255, 1, 0, 0, 0]),
    "int16-tiff": (encode(Image.fromarray(np.array([[0, 40000, 65535, 257]] * 2, np.uint16)), "TIFF"), "I;16",
                   [0, 156, 255, 1] * 2),
    "int16-pgm": (pgm16(40000), "I", [156] * 8),  # Pillow opens 16-bit PGM as 32-bit "I"
}


@pytest.mark.parametrize("name", sorted(HIGH_DEPTH))
def test_float_and_16_bit_grayscale_scale_by_their_range(name):
    data, mode, expected = HIGH_DEPTH[name]
    assert Image.open(io.BytesIO(data)).mode == mode  # the mode under test really is what Pillow reads
    rgb = np.asarray(decode_image(data, max_pixels=MAX))
    assert rgb.shape[:2] == (2, 4) and (rgb == rgb[..., :1]).all()
    assert rgb[..., 0].reshape(-1).tolist() == expected


def test_exif_orientation_is_applied():
    img = rgb_noise(6, 4)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    decoded = decode_image(encode(img, "PNG", exif=exif), max_pixels=MAX)
    assert decoded.size == (4, 6)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(img.transpose(Image.Transpose.ROTATE_270)))


def bomb_png(w=40_000, h=40_000) -> bytes:
    """A valid 1x1 PNG whose header claims w x h pixels (1.6 gigapixels): Pillow refuses it on open."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("data,kw,reason", [
    (b"", {}, "empty"),
    (b"this is not an image at all" * 10, {}, "decode_error"),
    (encode(rgb_noise(64, 64), "JPEG")[:300], {}, "decode_error"),  # truncated
    (encode(rgb_noise(64, 64), "PNG")[:200], {}, "decode_error"),
    (bomb_png(), {}, "too_many_pixels"),  # beyond Pillow's own limit
    (encode(rgb_noise(40, 30), "PNG"), {"max_pixels": 1000}, "too_many_pixels"),
    (encode(rgb_noise(40, 30), "PNG"), {"min_side": 31}, "too_small"),
])
def test_bad_bytes_raise_skip_with_reason(data, kw, reason):
    with pytest.raises(SkipSample) as info:
        decode_image(data, **{"max_pixels": MAX, **kw})
    assert info.value.reason == reason


def test_jpeg_draft_keeps_the_shorter_side_at_least_the_target():
    data = encode(rgb_noise(1000, 700), "JPEG")
    img = open_image(data, max_pixels=MAX, draft_side=128)
    assert 128 <= min(img.size) < 350  # decoded at 1/2 or 1/4 scale, never below the target
    assert open_image(data, max_pixels=MAX, draft_side=400).size == (1000, 700)  # < 2x: full decode


def test_skip_counter_deltas_and_state():
    c = SkipCounter()
    c.add("empty")
    c.add("decode_error")
    c.add("decode_error")
    assert c.delta() == {"empty": 1, "decode_error": 2} and c.delta() == {}
    c.add("too_small")
    assert c.delta() == {"too_small": 1}
    total = SkipCounter()
    total.update({"empty": 1})
    total.update({"empty": 2, "no_image": 1})
    assert total.as_dict() == {"empty": 3, "no_image": 1} and total.total == 4
    assert str(total) == "empty=3, no_image=1" and str(SkipCounter()) == "none"
    restored = SkipCounter()
    restored.load_state_dict(total.state_dict())
    assert restored.as_dict() == total.as_dict()
    with pytest.raises(ValueError):
        c.add("no_such_reason")


# --- transforms: the one protocol for training, evaluation and encoding ---

def test_pixel_values_map_exactly_to_minus_one_one():
    img = Image.fromarray(np.array([[[0, 255, 51]]], dtype=np.uint8))
    t = to_tensor(img)
    assert t.shape == (3, 1, 1)
    assert t.flatten().tolist() == [-1.0, 1.0, pytest.approx(51 / 127.5 - 1)]
    rgb = rgb_noise()
    assert np.array_equal(np.asarray(to_pil(to_tensor(rgb))), np.asarray(rgb))


def test_eval_protocol_resizes_shorter_side_and_center_crops():
    img = rgb_noise(40, 20)  # 2:1 -> 32x16 -> center 16x16
    t = prepare_image(img, 16)
    ref = img.resize((32, 16), Image.Resampling.BICUBIC).crop((8, 0, 24, 16))
    assert (t - to_tensor(ref)).abs().max() <= 1 / 127.5 + 1e-6
    same = rgb_noise(16, 16)  # already at resolution: untouched
    assert torch.equal(prepare_image(same, 16), to_tensor(same))
    assert prepare_image(rgb_noise(6, 9), 16).shape == (3, 16, 16)  # small images are upscaled
    assert prepare_image(img, None).shape == (3, 20, 40)  # no resolution: the whole image


def test_random_crop_and_flip_follow_the_rng():
    img = rgb_noise(50, 30)
    a = prepare_image(img, 24, random_crop=True, hflip=True, rng=random.Random(3))
    b = prepare_image(img, 24, random_crop=True, hflip=True, rng=random.Random(3))
    assert torch.equal(a, b)
    crops = {prepare_image(img, 24, random_crop=True, rng=random.Random(s)).sum().item() for s in range(8)}
    assert len(crops) > 1
    flips = [prepare_image(img, 24, hflip=True, rng=random.Random(s)) for s in range(8)]
    center = prepare_image(img, 24)
    assert any(torch.equal(f, center) for f in flips) and any(torch.equal(f, center.flip(-1)) for f in flips)
    with pytest.raises(ValueError):
        prepare_image(img, 24, random_crop=True)


def test_resize_crop_matches_resize_then_crop():
    img = rgb_noise(97, 61)
    for seed in range(4):
        rw, rh = shorter_side_size(97, 61, 32)
        r = random.Random(seed)
        left, top = r.randint(0, rw - 32), r.randint(0, rh - 32)
        ref = img.resize((rw, rh), Image.Resampling.BICUBIC).crop((left, top, left + 32, top + 32))
        out = resize_crop(img, 32, random.Random(seed))
        assert np.abs(np.asarray(out, int) - np.asarray(ref, int)).max() <= 1
