"""The SensorFlow wire messages, encoded and decoded by hand (not with prost, not with the
`protobuf` package): the tests check the binaries with code that shares nothing with them.

Field numbers and types are those of processors/core/proto/sensorflow/v1/messages.proto
(SensorReading, Feature, Prediction and their enums; decode_feature / decode_prediction name
every field, the window fields 10-12 and features_source_index 17 included); only the proto3 wire format is used:
varints (wire type 0), fixed64 (1), length-delimited (2) and fixed32 (5).

    f = decode(record.value)           # field number -> [raw values], in wire order
    field_int64(f, 1)                  # SensorReading.event_time_ms
    field_double(f, 2)                 # SensorReading.value
    field_string(f, 9)                 # Prediction.source_topic
    packed_varints(f.get(3, []))       # Prediction.features

A scalar field absent from the wire is its proto3 default (0, 0.0, ""); a scalar written more
than once is its last value (proto3's rule; the binaries write each field at most once).

Used by tests/sink/check.py, tests/independent and tests/e2e; each puts tests/lib on sys.path.
"""

import struct

# Enum value names, as in messages.proto.
SENSOR = {0: "SENSOR_UNSPECIFIED", 1: "SX", 2: "SY", 3: "SZ"}
FEATURE_KIND = {0: "FEATURE_KIND_UNSPECIFIED", 1: "FA", 2: "FI", 3: "FD"}
TRIGGER_KIND = {0: "TRIGGER_KIND_UNSPECIFIED", 1: "TRIGGER_SX", 2: "TRIGGER_SY", 3: "TRIGGER_FEATURES"}


# --- encoding ------------------------------------------------------------------------------
def encode_varint(n):
    """The varint bytes of integer n; a negative int64 is its ten-byte two's complement."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_reading(t_ms, value, sensor):
    """A SensorReading: 1 event_time_ms (int64, ms), 2 value (double), 3 sensor (enum number,
    1 SX, 2 SY, 3 SZ). Every field is written, zeros too."""
    return (
        encode_varint(1 << 3 | 0) + encode_varint(t_ms)
        + encode_varint(2 << 3 | 1) + struct.pack("<d", value)
        + encode_varint(3 << 3 | 0) + encode_varint(sensor)
    )


# --- decoding ------------------------------------------------------------------------------
def read_varint(buf, i):
    """The varint at buf[i:] -> (value as an unsigned integer, index after it)."""
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def decode(buf):
    """One message's bytes -> {field number: [raw values in wire order]}: int for a varint,
    bytes for fixed64, fixed32 and length-delimited fields. Raises ValueError on a wire type
    proto3 does not write (groups)."""
    fields, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 2:
            n, i = read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        fields.setdefault(num, []).append(v)
    return fields


def signed(n):
    """A varint read as unsigned -> the int64 it encodes (int32, enums, bools: unchanged)."""
    return n - (1 << 64) if n >= 1 << 63 else n


def packed_varints(raw_list):
    """The raw values of a repeated int64 field (packed chunks as bytes, or unpacked ints)
    -> [int64], in wire order."""
    out = []
    for raw in raw_list:
        if isinstance(raw, int):
            out.append(signed(raw))
            continue
        i = 0
        while i < len(raw):
            v, i = read_varint(raw, i)
            out.append(signed(v))
    return out


def field_int64(fields, num):
    """An integer field (int64, int32, uint32, bool, enum) of decode()'s result; 0 when absent."""
    return signed(fields[num][-1]) if fields.get(num) else 0


def field_double(fields, num):
    """A double field of decode()'s result; 0.0 when absent (proto3 leaves 0.0 off the wire)."""
    return struct.unpack("<d", fields[num][-1])[0] if fields.get(num) else 0.0


def field_string(fields, num):
    """A string field of decode()'s result (UTF-8); "" when absent."""
    return fields[num][-1].decode() if fields.get(num) else ""


# --- named messages ----------------------------------------------------------------------
def decode_feature(buf):
    """A Feature's bytes -> dict: client_id (1), kind (2, FEATURE_KIND number), event_time_ms
    (3), source_partition (4), source_offset (5), bin (6), value (7, double), window_count (8),
    ingest_time_ms (9), window_start_ms (10) and window_end_ms (11) (the window
    [start, end), ms), source_index (12, which of the SZ reading's emissions, 0-based)."""
    f = decode(buf)
    out = {"client_id": field_string(f, 1), "value": field_double(f, 7)}
    for name, num in [("kind", 2), ("event_time_ms", 3), ("source_partition", 4), ("source_offset", 5),
                      ("bin", 6), ("window_count", 8), ("ingest_time_ms", 9), ("window_start_ms", 10),
                      ("window_end_ms", 11), ("source_index", 12)]:
        out[name] = field_int64(f, num)
    return out


def decode_prediction(buf):
    """A Prediction's bytes -> dict: client_id (1), event_time_ms (2), features (3, 5 int64),
    probability (4), alert (5), model_name (6), model_version (7), trigger (8, TRIGGER_KIND
    number), source_topic (9), source_partition (10), source_offset (11),
    features_source_partition (12), features_source_offset (13), features_source_index (17),
    ingest_time_ms (14), threshold (15), predicted_at_ms (16)."""
    f = decode(buf)
    out = {"client_id": field_string(f, 1), "features": packed_varints(f.get(3, [])),
           "probability": field_double(f, 4), "alert": bool(field_int64(f, 5)),
           "model_name": field_string(f, 6), "model_version": field_string(f, 7),
           "source_topic": field_string(f, 9), "threshold": field_double(f, 15)}
    for name, num in [("event_time_ms", 2), ("trigger", 8), ("source_partition", 10), ("source_offset", 11),
                      ("features_source_partition", 12), ("features_source_offset", 13),
                      ("features_source_index", 17), ("ingest_time_ms", 14), ("predicted_at_ms", 16)]:
        out[name] = field_int64(f, num)
    return out
