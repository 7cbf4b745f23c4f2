#!/usr/bin/env python3
"""Writes Tests/SafeTensorsTests/Fixtures/reference.safetensors with the reference `safetensors`
serializer, so the Swift reader is tested against bytes it did not write itself.

    python3 -m venv /tmp/stvenv && /tmp/stvenv/bin/pip install safetensors numpy
    /tmp/stvenv/bin/python tools/make_safetensors_fixture.py

One tensor per dtype. Names are chosen so that name order equals the reference's data order
(largest dtype first, then name); the Swift writer lays tensors out in name order, so writing the
same tensors from Swift must give identical bytes (tested in ReferenceFixtureTests).
The expected values are repeated in that test; keep the two in sync.
"""
import json
import pathlib
import struct

import numpy as np
from safetensors import TensorSpec, serialize_file

OUTPUT = pathlib.Path(__file__).resolve().parent.parent / "Tests/SafeTensorsTests/Fixtures/reference.safetensors"


def bfloat16_bits(values):
    """bfloat16 bit patterns of values exactly representable in bfloat16 (truncation is exact)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32) >> 16
    assert np.array_equal((bits << 16).view(np.float32), np.asarray(values, dtype=np.float32))
    return bits.astype(np.uint16)


# name -> (safetensors dtype name for TensorSpec, shape, little-endian array)
TENSORS = {
    "a_int64": ("int64", [2, 3], np.array([-3, -1, 0, 1, 2**40, -(2**62)], dtype="<i8")),
    "b_float64": ("float64", [3], np.array([1.5, -2.25, 1e-3], dtype="<f8")),
    "c0_scalar": ("float32", [], np.array(42.5, dtype="<f4")),
    "c1_empty": ("float32", [0, 4], np.zeros((0, 4), dtype="<f4")),
    "c_float32": ("float32", [2, 2], np.array([0.1, -1.5, np.inf, -0.0], dtype="<f4")),
    "d_int32": ("int32", [3], np.array([-(2**31), 0, 2**31 - 1], dtype="<i4")),
    "e_bfloat16": ("bfloat16", [4], bfloat16_bits([1.0, -2.5, 3.140625, -np.inf])),
    # 2**-24 is the smallest float16 subnormal; 0.0999755859375 is float16(0.1).
    "f_float16": ("float16", [5], np.array([0.5, -65504, 2**-24, np.inf, 0.0999755859375], dtype="<f2")),
    "g_int16": ("int16", [2], np.array([-32768, 32767], dtype="<i2")),
    "h_int8": ("int8", [2], np.array([-128, 127], dtype="<i1")),
    "i_uint8": ("uint8", [3], np.array([0, 128, 255], dtype="<u1")),
    "j_bool": ("bool", [2], np.array([True, False], dtype=np.bool_)),
}
# One key only: the reference writes metadata in hash-map order, which is not reproducible.
METADATA = {"format": "pt"}


def main():
    arrays = {}  # keep buffers alive during serialization, as serialize_file requires
    specs = {}
    for name, (dtype, shape, array) in TENSORS.items():
        arrays[name] = np.ascontiguousarray(array)
        specs[name] = TensorSpec(dtype=dtype, shape=shape, data_ptr=arrays[name].ctypes.data, data_len=arrays[name].nbytes)
    serialize_file(specs, str(OUTPUT), metadata=METADATA)

    data = OUTPUT.read_bytes()
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_length])
    order = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in header.items() if k != "__metadata__")
    names_by_offset = [k for _, _, k in order if k != "c1_empty"]
    assert names_by_offset == sorted(names_by_offset), f"data order is not name order: {names_by_offset}"
    print(f"wrote {OUTPUT} ({len(data)} bytes)")
    print(data[8 : 8 + header_length].decode())


if __name__ == "__main__":
    main()
