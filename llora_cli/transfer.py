"""`llora export` / `llora import`: move artifacts between stores (e.g. through a shared directory).

Full transfer copies the payload files with ``export.json`` (row, parents, file
hashes). Low-bandwidth transfer of a merged checkpoint ships only the kept
training adapter (a classifier's: LoRA plus its head) and a recipe; the receiving store, which must already hold the
exact base (content hash), rebuilds the checkpoint with the deterministic merge
and refuses it unless the content hash equals the exported one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from llora_store import Store
from llora_store.catalog import new_id, validate_name
from llora_store.errors import BadInput, Conflict, Corrupt, NotFound
from llora_store.files import content_hash, scan, sha256_file
from llora_store.models import Artifact

MANIFEST = "export.json"
LOW_BANDWIDTH_FILES = ("adapter_config.json", "adapter_model.safetensors")
DELIVERIES = ("auto", "fused", "low-bandwidth")


@dataclass(frozen=True)
class DeliveryPlan:
    """How to ship a merged checkpoint (a fused classifier, or any merged model) to another store.

    ``fused_bytes``: every file of the checkpoint; ``low_bandwidth_bytes``: the kept adapter's files (LoRA and, for a
    classifier, its head), None without a kept adapter; ``rebuild_peak_bytes``: the receiver's streaming-merge peak
    (``loading.plan_for_dir``: three fp32 copies of the largest tensor plus the adapter and the runtime);
    ``available_bytes``: the receiver's free memory assumed (``--memory``, else this machine's)."""

    artifact: dict
    fused_bytes: int
    low_bandwidth_bytes: int | None
    rebuild_peak_bytes: int | None
    available_bytes: int
    recommended: str  # "fused" or "low-bandwidth"
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def plan_delivery(store: Store, ref: str, *, available: int | None = None) -> DeliveryPlan:
    """The recommended delivery of merged ``ref``: low-bandwidth when a kept adapter exists and the receiver can
    rebuild within 80% of ``available`` bytes, else fused. The low-bandwidth path also needs the exact base (content
    hash) on the receiving side, which the sender cannot see; the reason says so. BadInput for another kind."""
    from llora_cli.loading import available_memory, plan_for_dir

    d = store.describe(ref)
    art = d.summary
    if art.kind != "merged":
        raise BadInput(f"{art.kind} '{art.name}' is not a merged checkpoint; delivery paths are for merged ones "
                       "(the fused files, or the adapter and a recipe)")
    fused = sum(f.bytes for f in d.files if not f.deleted)
    available = available_memory() if available is None else available
    adapter = next((p for p in art.parents if p["role"] == "adapter"), None)
    base = next((p for p in art.parents if p["role"] == "merge_base"), None)
    kept = adapter is not None and base is not None and store.get(adapter["id"]).state != "discarded" and all(
        (store.path_of(adapter["id"]) / n).is_file() for n in LOW_BANDWIDTH_FILES)
    info = {"id": art.id, "name": art.name, "kind": art.kind, "task": (d.metadata or {}).get("task")}
    if not kept:
        return DeliveryPlan(info, fused, None, None, available, "fused",
                            "no kept adapter and base in this store to ship it with (merge with --keep-adapter for "
                            "the low-bandwidth path)")
    adir = store.path_of(adapter["id"])
    small = sum((adir / n).stat().st_size for n in LOW_BANDWIDTH_FILES)
    peak = plan_for_dir(store.path_of(base["id"]), adir, {"id": adapter["id"], "name": "", "kind": "adapter"},
                        available=available).merge_peak_bytes or 0
    if peak > available * 0.8:
        return DeliveryPlan(info, fused, small, peak, available, "fused",
                            f"rebuilding needs ~{peak >> 20} MiB, more than 80% of the {available >> 20} MiB free")
    return DeliveryPlan(info, fused, small, peak, available, "low-bandwidth",
                        f"ships {small:,} of {fused:,} bytes ({small / max(fused, 1):.1%}); the receiver rebuilds in "
                        f"~{peak >> 20} MiB and needs the exact base (content hash "
                        f"{str(store.get(base['id']).content_hash)[:12]});"
                        " without it, ship fused")


def export_artifact(store: Store, ref: str, to: Path, *, low_bandwidth: bool = False,
                    delivery: str | None = None) -> Path:
    """Write ``ref`` under ``to/<id>/`` with its manifest. ``delivery`` (merged checkpoints): ``fused``,
    ``low-bandwidth`` or ``auto`` (``plan_delivery``'s recommendation); the choice and its reason are recorded in the
    manifest, and the importing store keeps them in the artifact's metadata (``imported.delivery``)."""
    if delivery is not None and delivery not in DELIVERIES:
        raise BadInput(f"--delivery must be one of {', '.join(DELIVERIES)}, got {delivery!r}")
    chosen = None
    if delivery is not None:
        if low_bandwidth and delivery != "low-bandwidth":
            raise BadInput("--low-bandwidth and --delivery disagree; give one")
        plan = plan_delivery(store, ref)
        mode = plan.recommended if delivery == "auto" else delivery
        chosen = {"requested": delivery, "mode": mode, "reason": plan.reason if delivery == "auto" else "requested",
                  "plan": plan.to_json()}
        low_bandwidth = mode == "low-bandwidth"
    d = store.describe(ref)
    art = d.summary
    if art.state == "discarded":
        raise BadInput(f"{art.kind} '{art.name}' ({art.id}) is discarded; its files are gone")
    out = Path(to).expanduser() / art.id
    if out.exists():
        raise Conflict(f"{out} already exists", hint="export to another directory or remove it")
    parents = []
    for p in art.parents:
        pa = store.get(p["id"])
        parents.append({"id": pa.id, "role": p["role"], "kind": pa.kind, "name": pa.name, "content_hash": pa.content_hash})
    manifest = {"format": 1, "mode": "full", "id": art.id, "kind": art.kind, "name": art.name,
                "content_hash": art.content_hash, "base_hash": d.base_hash, "quantization": d.quantization,
                "domain": art.domain, "metadata": d.metadata, "parents": parents,
                "files": [{"path": f.path, "sha256": f.sha256, "bytes": f.bytes} for f in d.files if not f.deleted]}
    if chosen is not None:
        manifest["delivery"] = chosen
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if low_bandwidth:
            if art.kind != "merged":
                raise BadInput("--low-bandwidth applies to merged checkpoints (it ships the adapter and a recipe)")
            adapter = next((p for p in parents if p["role"] == "adapter"), None)
            base = next((p for p in parents if p["role"] == "merge_base"), None)
            if adapter is None or base is None or store.get(adapter["id"]).state == "discarded":
                raise BadInput(f"merged '{art.name}' has no kept adapter to ship",
                               hint="merge with --keep-adapter to allow low-bandwidth transfer, or export it in full")
            adir = store.path_of(adapter["id"])
            for n in LOW_BANDWIDTH_FILES:
                shutil.copyfile(adir / n, tmp / n)
            manifest.update(mode="recipe", recipe={"base_hash": base["content_hash"], "adapter": adapter,
                                                   "merge": d.metadata.get("merge", {})})
        else:
            for f in manifest["files"]:
                (tmp / f["path"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(d.directory / f["path"], tmp / f["path"])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def import_artifact(store: Store, src: Path, *, name: str | None = None, command: str = "") -> Artifact:
    src = Path(src).expanduser()
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        raise BadInput(f"{src} is not a llora export (no readable {MANIFEST})") from None
    name = validate_name(name if name is not None else manifest["name"])
    if any(a.id == manifest["id"] for a in store.list()):
        raise Conflict(f"this store already has artifact {manifest['id']}")
    staging = store.new_staging(manifest["id"])
    try:
        if manifest["mode"] == "recipe":
            _rebuild(store, src, manifest, staging)
        else:
            for f in manifest["files"]:
                p = src / f["path"]
                if not p.is_file() or sha256_file(p) != f["sha256"]:
                    raise Corrupt(f"{p} is missing or does not match its recorded sha256; nothing was imported")
                (staging / f["path"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, staging / f["path"])
        records = scan(staging)
        if content_hash(records) != manifest["content_hash"]:
            raise Corrupt(f"the {'rebuilt' if manifest['mode'] == 'recipe' else 'copied'} files hash to "
                          f"{content_hash(records)[:12]}, the export recorded {str(manifest['content_hash'])[:12]}; "
                          "nothing was imported")
        known = {a.id for a in store.list()}
        parents = [(p["id"], p["role"]) for p in manifest["parents"] if p["id"] in known]
        meta = {**manifest["metadata"], "imported": {"from": str(src), "mode": manifest["mode"],
                                                     "parents": manifest["parents"],
                                                     **({"delivery": manifest["delivery"]} if "delivery" in manifest else {})}}
        state = "trained" if manifest["kind"] in ("adapter", "modifier", "router") else "ready"
        return store.create(manifest["kind"], name, state=state, staging=staging, parents=parents, metadata=meta,
                            base_hash=manifest["base_hash"], quantization=manifest["quantization"],
                            domain=manifest["domain"], artifact_id=manifest["id"], command=command,
                            reason=f"imported ({manifest['mode']}) from {src}", known_hashes={r.path: r for r in records})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _rebuild(store: Store, src: Path, manifest: dict, staging: Path) -> None:
    from llora_cli.loading import save_dequantized, stored_format
    from llora_cli.merge import copy_model_files, stream_merge

    recipe = manifest["recipe"]
    bases = [a for a in store.artifacts() if a.content_hash == recipe["base_hash"] and a.state != "discarded"
             and a.kind in ("base", "merged", "compressed")]
    if not bases:
        raise NotFound(f"this store has no base with content hash {recipe['base_hash'][:12]} to rebuild on",
                       hint="import the full checkpoint instead (export without --low-bandwidth)")
    base_dir = store.path_of(bases[0].id)
    merge = recipe["merge"]
    dequantized = None
    if stored_format(base_dir) != "safetensors":  # rebuilt like the original merge: on the dequantized base
        dequantized = store.new_staging(new_id())
        save_dequantized(base_dir, dequantized)
        base_dir = dequantized
    try:
        result = stream_merge(base_dir, src, staging, dtype=merge.get("dtype", "bf16"), qlora=merge.get("qlora"),
                              naive=merge.get("qlora_merge") == "naive")
        meta = manifest.get("metadata") or {}
        labels = meta.get("labels") if meta.get("task") == "classify" else None  # a classifier: its head's labels
        copy_model_files(base_dir, staging, merge.get("dtype", "bf16"), untied=bool(result["untied"]), labels=labels)
    finally:
        if dequantized is not None:
            shutil.rmtree(dequantized, ignore_errors=True)
