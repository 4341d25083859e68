"""modelfiles.parse_gguf_once: a GGUF file's metadata parsed once per block, never reused across a change."""

import threading

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from llora_cli.modelfiles import parse_gguf_once  # noqa: E402


def write_gguf(path, value: int) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("test.value", value)
    w.add_tensor("token_embd.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def value(reader) -> int:
    f = reader.fields["test.value"]
    return int(f.parts[f.data[0]][0])


def test_one_reader_per_file_inside_the_block_and_fresh_ones_outside(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, 7)
    with parse_gguf_once():
        a, b = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        with parse_gguf_once():  # nested blocks share the cache
            c = gguf.GGUFReader(path)
        assert a is b is c
        assert value(a) == 7 and a.tensors[0].data.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
        assert isinstance(a, gguf.GGUFReader)
    d, e = gguf.GGUFReader(path), gguf.GGUFReader(path)
    assert d is not a and d is not e  # outside: plain readers, nothing kept mapped
    with parse_gguf_once():
        assert gguf.GGUFReader(path) is not a  # the finished block's cache was dropped


def test_a_rewritten_file_is_parsed_again(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, 1)
    with parse_gguf_once():
        first = gguf.GGUFReader(path)
        (tmp_path / "n.gguf").unlink(missing_ok=True)
        write_gguf(tmp_path / "n.gguf", 2)
        (tmp_path / "n.gguf").replace(path)  # a new inode at the same path
        again = gguf.GGUFReader(path)
        assert again is not first and value(again) == 2 and value(first) == 1


def test_errors_are_not_cached(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 3)
    with parse_gguf_once():
        for _ in range(2):
            with pytest.raises(Exception):
                gguf.GGUFReader(bad)
        with pytest.raises(FileNotFoundError):
            gguf.GGUFReader(tmp_path / "missing.gguf")


def test_threads_share_the_block(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, 3)
    got = []
    with parse_gguf_once():
        main = gguf.GGUFReader(path)
        threads = [threading.Thread(target=lambda: got.append(gguf.GGUFReader(path))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(got) == 4 and all(r is main for r in got)
