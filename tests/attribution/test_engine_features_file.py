"""Features kept out of the process's memory: a build writes them to a file as it forms them (storage.RowFile), every
pass over them (norms, Fisher blocks, scores, saving) unmaps each chunk it has read (storage.release_rows), and the
index file is written tensor by tensor (storage.write_safetensors), readable by safetensors itself. Tensors and the
tiny model only (no Django)."""

from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from attribution.engine import AttributionIndex, build_index
from attribution.engine.index import NULL_QUERIES, calibrate_floor, fisher_blocks
from attribution.engine.lora import LoraMatrix
from attribution.engine.storage import RowFile, row_norms, write_safetensors

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/smaps (Linux)")


def _resident_of(path: Path) -> int:
    """Bytes of `path` mapped into this process and resident (its mappings' Rss in /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's first line: range perms offset dev inode
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def test_a_build_into_a_features_file_gives_the_index_built_in_memory(planted, tokenizer, tmp_path):
    _, model, index, datanet = planted
    path = tmp_path / "features.building"
    built = build_index(model, datanet.rows, k=2048, batch_size=8, pad_id=tokenizer.pad_token_id, features_file=path)
    assert isinstance(built.features, np.memmap) and Path(built.features.filename) == path
    assert path.stat().st_size == index.size * index.k  # k bytes a row, nothing else
    np.testing.assert_array_equal(built.features, index.features)
    np.testing.assert_array_equal(built.row_scale, index.row_scale)
    for got, want in zip(built.fisher_inverse, index.fisher_inverse, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(built.h_norms(), index.h_norms())
    assert built.null_floor == index.null_floor
    saved = AttributionIndex.load(built.save(tmp_path / "index.safetensors"))
    np.testing.assert_array_equal(saved.features, index.features)
    path.unlink()  # the caller's to remove once saved: the saved index does not need it
    phi = index.query_features(model, *datanet.queries[0][:2])
    np.testing.assert_array_equal(saved.scores(phi), index.scores(phi))


def test_rows_written_in_any_order_read_back_in_place_and_unwritten_rows_are_zero(tmp_path):
    rows = RowFile(tmp_path / "rows", (5, 3), "float16")
    rows[[3, 0]] = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float16)
    rows[np.array([4])] = np.array([[7, 8, 9]], dtype=np.float16)
    mapped = rows.mapped()
    assert mapped.dtype == np.float16 and mapped.shape == (5, 3)
    np.testing.assert_array_equal(mapped, [[4, 5, 6], [0, 0, 0], [0, 0, 0], [1, 2, 3], [7, 8, 9]])
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        mapped[0, 0] = 1  # mapped read-only: only the build writes, through the file


def test_passes_over_a_built_index_leave_its_features_out_of_resident_memory(tmp_path):
    """Norms, Fisher norms, Fisher blocks, noise floors, scores and saving read every row of a build's features file
    and leave under 1% of it resident (all of it without `release_rows`); a loaded index keeps what a query read
    mapped, for the next query."""
    n, k = 20_000, 4096  # 82 MB of int8 features
    rng = np.random.default_rng(5)
    path = tmp_path / "features.building"
    rows = RowFile(path, (n, k))
    for start in range(0, n, 5000):
        rows[np.arange(start, start + 5000)] = rng.integers(-127, 128, size=(5000, k), dtype=np.int8)
    index = AttributionIndex(
        row_ids=np.arange(1, n + 1, dtype=np.int64),
        features=rows.mapped(),
        row_scale=np.full(n, 0.01, np.float32),
        matrices=[LoraMatrix(f"m{i}.lora_A", "A", (8, 64), 8) for i in range(64)],
        widths=[64] * 64,
        seed=0,
        projection="lowrank",
        kappa=0.1,
        fisher_inverse=[],
        damping=np.zeros(0),
        null_features=rng.standard_normal((NULL_QUERIES, k)).astype(np.float32),
        null_floor={},
    )
    queries = rng.standard_normal((3, k)).astype(np.float32)
    index.fisher_inverse, index.damping = fisher_blocks(index.features, index.widths, 0.1, row_scale=index.row_scale)
    index.null_floor = calibrate_floor(index)  # norms and Fisher norms too
    scores = index.scores(queries, "dot")
    saved = index.save(tmp_path / "index.safetensors")
    resident = _resident_of(path)
    assert resident < n * k // 100, f"{resident} bytes of the features file stayed resident; it holds {n * k}"
    features = np.fromfile(path, dtype=np.int8).reshape(n, k)
    np.testing.assert_array_equal(index.norms(), row_norms(features, index.row_scale))
    want = queries.astype(np.float64) @ features.T.astype(np.float64) * 0.01
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    loaded = AttributionIndex.load(saved)
    np.testing.assert_array_equal(loaded.features, features)  # what was read and unmapped was saved intact
    np.testing.assert_array_equal(loaded.scores(queries, "dot"), scores)
    assert _resident_of(saved) > n * k * 9 // 10  # serving: the rows a query read stay mapped for the next one


def test_index_files_are_read_by_safetensors_itself(tmp_path):
    tensors = {
        "features": np.arange(-60, 60, dtype=np.int8).reshape(8, 15),
        "row_ids": np.arange(8, dtype=np.int64),
        "scale": np.linspace(0, 1, 8, dtype=np.float32),
        "damping": np.array([0.5, 2.0]),
        "none": np.zeros(0),
        "empty": np.zeros((0, 15), dtype=np.float32),
        "half": np.ones((2, 3), dtype=np.float16),
    }
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, metadata={"engine": '{"format": "x"}'})
    read = load_file(path)
    assert set(read) == set(tensors)
    for name, array in tensors.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape
        np.testing.assert_array_equal(read[name], array)
    with safe_open(path, framework="numpy") as handle:
        assert handle.metadata() == {"engine": '{"format": "x"}'}
    assert (8 + int.from_bytes(path.read_bytes()[:8], "little")) % 8 == 0  # data starts 8-byte aligned
