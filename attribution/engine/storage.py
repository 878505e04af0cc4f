"""How an attribution index is stored: one safetensors file, its features int8 (format poa-index-4) or float16
(formats 2, 3) with a per-row scale, mapped from the file on load rather than read (see index.py's docstring).

A build with a features file (`RowFile`, what the training job does) writes each row's features to the file as it
forms them and maps them from it, and every pass over them (norms, Fisher blocks, data valuation's scores, saving)
unmaps each chunk once it is read (`release_rows`): they stay in the kernel's page cache, not in the job's resident
memory, which then does not grow with the rows (0.11 GiB at 9,000 rows of the Thorough preset's k = 13,440). A
loaded index's features stay mapped once read: a serving worker scores the same rows query after query.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import tempfile
from pathlib import Path

import numpy as np

from attribution.engine.lora import IGNORE_INDEX, EngineError, LoraMatrix

INDEX_FORMAT = "poa-index-4"  # 4: int8 features, stored row norms; 3: + fluent calibration; 2: permutation nulls
# an index of format 2 is read as built (no fluent calibration); formats 2 and 3 have float16 features
READ_FORMATS = ("poa-index-2", "poa-index-3", INDEX_FORMAT)
FEATURE_DTYPES = {"int8": INDEX_FORMAT, "float16": "poa-index-3"}  # how build_index may store features -> format
FP16_TARGET = 1024.0  # each stored row's largest |value|: far from fp16 overflow, ~11 bits of relative precision
INT8_LEVELS = 127.0  # format 4: each stored row's largest |value| (symmetric: -127..127)
CHUNK_BYTES = 16 * 2**20  # the most one float32 (or float64) copy of stored rows takes in a pass over every row
_SAFETENSORS_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "U8": "u1", "I32": "<i4", "I64": "<i8"}


def save_index(index, path: str | Path) -> Path:
    """Written to a temporary file beside `path`, then renamed over it: a process that has the previous file
    mapped (a worker, or this index itself when it was loaded from `path`) keeps reading the old file intact."""
    path = Path(path)
    if index.features.dtype not in (np.int8, np.float16):
        raise EngineError(f"Index features are stored as int8 or float16, not {index.features.dtype}.")
    if index.format == INDEX_FORMAT and index.features.dtype != np.int8:
        raise EngineError(f"An index of format {INDEX_FORMAT} stores its features as int8.")
    tensors = {
        "row_ids": np.ascontiguousarray(index.row_ids, dtype=np.int64),
        "features": index.features,  # written chunk by chunk (write_safetensors): no whole copy
        "row_scale": np.ascontiguousarray(index.row_scale, dtype=np.float32),
        "damping": np.asarray(index.damping, dtype=np.float64),
        "null_features": np.ascontiguousarray(index.null_features, dtype=np.float32),
    }
    if index.format == INDEX_FORMAT:  # what scoring needs per row, so that loading makes no pass over features
        tensors["row_norms"] = np.ascontiguousarray(index.norms(), dtype=np.float32)
        tensors["row_h_norms"] = np.ascontiguousarray(index.h_norms(), dtype=np.float32)
    for position, inverse in enumerate(index.fisher_inverse):
        tensors[f"fisher_inverse.{position}"] = np.ascontiguousarray(inverse, dtype=np.float32)
    if index.fluent_queries:
        tensors["fluent_features"] = np.ascontiguousarray(index.fluent_features, dtype=np.float32)
        tensors["fluent_ids"] = np.asarray([t for ids, _ in index.fluent_queries for t in ids], dtype=np.int64)
        tensors["fluent_lengths"] = np.asarray(
            [(len(ids), sum(label != IGNORE_INDEX for label in labels)) for ids, labels in index.fluent_queries],
            dtype=np.int64,
        )
    meta = {
        **index.params(),
        "kinds": [m.kind for m in index.matrices],
        "shapes": [list(m.shape) for m in index.matrices],
        "ranks": [m.rank for m in index.matrices],
        "build_seconds": index.build_seconds,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write_safetensors(temporary, tensors, metadata={"engine": json.dumps(meta)})
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


_DTYPE_NAMES = {np.dtype(code): name for name, code in _SAFETENSORS_DTYPES.items()}


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray], *, metadata: dict[str, str]) -> None:
    """A safetensors file (the format safetensors' own writers make and readers check: a little-endian header
    length, a JSON header padded with spaces to 8 bytes, then each tensor's bytes in a row, largest item size
    first), written tensor by tensor and a big tensor CHUNK_BYTES at a time: no copy of a whole tensor is made,
    and a build's features file is unmapped as it is read (`release_rows`)."""
    names = sorted(tensors, key=lambda name: (-tensors[name].dtype.itemsize, name))
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in names:
        array = tensors[name]
        if array.dtype not in _DTYPE_NAMES:
            raise EngineError(f"Tensor {name!r} has dtype {array.dtype}, which an index does not store.")
        header[name] = {"dtype": _DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}  # fmt: skip
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as out:
        out.write(len(raw).to_bytes(8, "little") + raw)
        for name in names:
            array = tensors[name]
            rows = array.reshape((array.shape[0], math.prod(array.shape[1:])) if array.ndim > 1 else (1, array.size))
            step = chunk_rows(max(1, rows.shape[1]), rows.dtype.itemsize)
            for start in range(0, len(rows), step):
                out.write(np.ascontiguousarray(rows[start : start + step]).data)
                release_rows(array, start, start + step)


def release_rows(features: np.ndarray, start: int, stop: int) -> None:
    """Unmaps rows [start, stop) of features a build wrote to a file (`RowFile.mapped`) once they have been read:
    the kernel's page cache keeps them, not this process (a later read maps them again). Anything else (features
    in memory, a loaded index's: scored again and again, unmapping them made each query 18% slower at 4,000 rows):
    nothing to do."""
    mapping = getattr(features, "_mmap", None)
    if not getattr(features, "unmap_after_read", False) or mapping is None or stop <= start or not features.size:
        return
    base = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    first = features.ctypes.data - base + start * features.strides[0]
    last = min(len(mapping), features.ctypes.data - base + stop * features.strides[0])
    first -= first % mmap.PAGESIZE
    if last > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


class RowFile:
    """Stored features written to a file as a build forms them (`rows_file[indices] = rows`: os.pwrite, row by row,
    in any order) and then mapped read-only (`mapped`): they never sit in the building process's memory. Unwritten
    rows read as zeros."""

    def __init__(self, path: str | Path, shape: tuple[int, int], dtype: str | np.dtype = "int8"):
        self.path, self.shape, self.dtype = Path(path), (int(shape[0]), int(shape[1])), np.dtype(dtype)
        with open(self.path, "wb") as handle:
            handle.truncate(self.shape[0] * self.shape[1] * self.dtype.itemsize)

    def __setitem__(self, indices, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        with open(self.path, "r+b") as handle:
            for index, row in zip(np.asarray(indices).tolist(), rows, strict=True):
                os.pwrite(handle.fileno(), row.data, index * row.nbytes)

    def mapped(self) -> np.ndarray:
        """The rows, mapped read-only; passes over them unmap what they have read (`release_rows`)."""
        features = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)
        features.unmap_after_read = True
        return features


def load_index(cls, path: str | Path):
    """The index at `path`, its features mapped from the file (not read); every other tensor is read."""
    path = Path(path)
    if not path.exists():
        raise EngineError(f"No attribution index at {path}.")
    header, data_start = _safetensors_header(path)
    raw_meta = (header.get("__metadata__") or {}).get("engine")
    if raw_meta is None:
        raise EngineError(f"{path} is not an attribution index (no engine metadata).")
    try:
        meta = json.loads(raw_meta)
    except json.JSONDecodeError:
        raise EngineError(f"{path} is corrupt: its engine metadata is not JSON.") from None
    if meta.get("format") not in READ_FORMATS:
        readable = ", ".join(map(repr, READ_FORMATS))
        raise EngineError(f"{path} has index format {meta.get('format')!r}; this engine reads {readable}.")
    mapped = {name: _map_tensor(path, name, spec, data_start) for name, spec in header.items()}
    mapped.pop("__metadata__", None)
    tensors = {name: np.array(array) for name, array in mapped.items() if name != "features"}
    features = mapped.get("features")
    if features is None or features.ndim != 2 or features.dtype not in (np.int8, np.float16):
        raise EngineError(f"{path} is corrupt: it has no (rows, k) int8 or float16 features.")
    n, k = features.shape
    expected = {"row_ids": (n,), "row_scale": (n,), "row_norms": (n,), "row_h_norms": (n,)}
    for name, shape in expected.items():
        if name in tensors and tensors[name].shape != shape:
            raise EngineError(f"{path} is corrupt: {name} has shape {tensors[name].shape}, expected {shape}.")
    if meta["format"] == INDEX_FORMAT and not {"row_norms", "row_h_norms"} <= tensors.keys():
        raise EngineError(f"{path} is corrupt: an index of format {INDEX_FORMAT} stores its row norms.")
    if int(meta["k"]) != k or sum(meta["widths"]) != k:
        raise EngineError(f"{path} is corrupt: its features have {k} dimensions, its metadata says {meta['k']}.")
    fluent = []
    if "fluent_ids" in tensors:
        flat, start = tensors["fluent_ids"].tolist(), 0
        for total, answer in tensors["fluent_lengths"].tolist():
            ids = flat[start : start + total]
            fluent.append((ids, [IGNORE_INDEX] * (total - answer) + ids[total - answer :]))
            start += total
    matrices = [
        LoraMatrix(name, kind, tuple(shape), rank)
        for name, kind, shape, rank in zip(meta["matrices"], meta["kinds"], meta["shapes"], meta["ranks"], strict=True)
    ]
    return cls(
        row_ids=tensors["row_ids"],
        features=features,
        row_scale=tensors["row_scale"],
        matrices=matrices,
        widths=list(meta["widths"]),
        seed=int(meta["seed"]),
        projection=meta["projection"],
        kappa=float(meta["kappa"]),
        fisher_inverse=[tensors[f"fisher_inverse.{p}"] for p in range(len(matrices))],
        damping=tensors["damping"],
        null_features=tensors["null_features"],
        null_floor={key: float(value) for key, value in meta["null_floor"].items()},
        null_alpha=float(meta["null_alpha"]),
        build_seconds=float(meta["build_seconds"]),
        fluent_features=tensors.get("fluent_features", np.zeros((0, int(meta["k"])), dtype=np.float32)),
        fluent_queries=fluent,
        calibration=dict(meta.get("calibration", {})),
        format=meta["format"],
        _norms=tensors.get("row_norms"),
        _h_norms=tensors.get("row_h_norms"),
    )


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The safetensors header (tensor name -> dtype, shape, data_offsets; "__metadata__") and where data starts,
    every tensor checked to lie within the file: a truncated or corrupt file is refused here, not met later as a
    crash while a query reads a missing page."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if length <= 0 or 8 + length > size:
            raise EngineError(f"{path} is truncated or not a safetensors file.")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise EngineError(f"{path} is corrupt: its safetensors header is not readable.")
    data_size = size - 8 - length
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in spec["data_offsets"])
            itemsize = np.dtype(_SAFETENSORS_DTYPES[spec["dtype"]]).itemsize
            count = math.prod(int(d) for d in spec["shape"])
        except (KeyError, TypeError, ValueError):
            raise EngineError(f"{path} is corrupt: tensor {name!r} has an unreadable entry.") from None
        if end > data_size:
            raise EngineError(f"{path} is truncated: tensor {name!r} ends past the end of the file.")
        if not 0 <= begin <= end or end - begin != count * itemsize:
            raise EngineError(f"{path} is corrupt: tensor {name!r} does not match its shape.")
    return header, 8 + length


def _map_tensor(path: Path, name: str, spec, data_start: int) -> np.ndarray:
    """A read-only view of one tensor of the file (checked by `_safetensors_header`), mapped, not read."""
    if name == "__metadata__":
        return spec
    dtype = np.dtype(_SAFETENSORS_DTYPES[spec["dtype"]])
    shape = tuple(int(d) for d in spec["shape"])
    begin, end = (int(x) for x in spec["data_offsets"])
    if begin == end:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)


def chunk_rows(k: int, itemsize: int = 4) -> int:
    """Rows of k values of `itemsize` bytes that fit in CHUNK_BYTES (at least one): the passes over every stored row
    (norms, Fisher blocks) copy this many rows at a time, so their temporaries are bounded by bytes, whatever the
    number of rows and k (a fixed 4,096 rows held 0.2 GB per float32 copy at k = 13,440, the Thorough preset's)."""
    return max(1, CHUNK_BYTES // max(1, k * itemsize))


def dequantised_rows(features: np.ndarray, scale: np.ndarray, start: int, stop: int) -> np.ndarray:
    """phi of rows [start, stop) as one float32 copy (features * scale), the rows read then unmapped
    (`release_rows`) when a build wrote them to a file."""
    out = features[start:stop].astype(np.float32)
    out *= np.asarray(scale[start:stop], dtype=np.float32)[:, None]
    release_rows(features, start, stop)
    return out


def row_norms(features: np.ndarray, row_scale: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """|phi_i| per row of stored features (chunks of `chunk` rows, default `chunk_rows`: no full float32 copy)."""
    chunk = chunk or chunk_rows(features.shape[1])
    out = np.empty(features.shape[0], dtype=np.float32)
    for start in range(0, features.shape[0], chunk):
        out[start : start + chunk] = np.linalg.norm(dequantised_rows(features, row_scale, start, start + chunk), axis=1)
    return out


def quantise_rows(phi: np.ndarray, dtype: str = "int8") -> tuple[np.ndarray, np.ndarray]:
    """Stored features and per-row scale of float32 rows phi: int8 with scale max|phi_i| / 127 (symmetric, round to
    nearest), or float16 with scale max|phi_i| / FP16_TARGET (formats 2, 3). An all-zero row gets scale 1."""
    phi = np.asarray(phi, dtype=np.float32)
    top = np.abs(phi).max(axis=1) if phi.size else np.zeros(phi.shape[0], dtype=np.float32)
    if dtype == "int8":
        scale = top / np.float32(INT8_LEVELS)
        scale[scale == 0] = 1.0
        stored = np.clip(np.rint(phi / scale[:, None]), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    elif dtype == "float16":
        scale = top / np.float32(FP16_TARGET)
        scale[scale == 0] = 1.0
        stored = (phi / scale[:, None]).astype(np.float16)
    else:
        raise EngineError(f"Features are stored as {' or '.join(FEATURE_DTYPES)}, not {dtype!r}.")
    return stored, scale.astype(np.float32)
