"""`verify` re-hashes files and reports tampering, truncation, missing and unexpected files."""

from __future__ import annotations


def make(store):
    st = store.new_staging("v")
    (st / "model.safetensors").write_bytes(b"0123456789")
    (st / "config.json").write_text("{}")
    return store.create("base", "v", staging=st)


def test_clean_artifact_verifies(store):
    a = make(store)
    report = store.verify(a.id)
    assert report.ok and report.checked == 2


def test_tampered_same_size_file_is_reported(store):
    a = make(store)
    (store.layout.artifact_dir(a.id) / "model.safetensors").write_bytes(b"0123456780")
    assert store.verify(a.id).problems == ["model.safetensors: content changed (sha256 differs from the catalog)"]


def test_missing_truncated_and_extra_files_are_reported(store):
    a = make(store)
    d = store.layout.artifact_dir(a.id)
    (d / "config.json").unlink()
    (d / "model.safetensors").write_bytes(b"01")
    (d / "intruder.bin").write_bytes(b"x")
    assert store.verify(a.id).problems == [
        "config.json: missing",
        "model.safetensors: size 2 bytes, recorded 10",
        "intruder.bin: not recorded in the catalog",
    ]


def test_content_hash_is_stable_and_order_free(store):
    from llora_store.files import FileRecord, content_hash

    a = [FileRecord("a", "1" * 64, 1), FileRecord("b", "2" * 64, 2)]
    assert content_hash(a) == content_hash(list(reversed(a)))
    assert content_hash(a) != content_hash([FileRecord("a", "1" * 64, 1)])
