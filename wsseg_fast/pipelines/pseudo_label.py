"""The pseudo-labelling job: weak annotations + SAM -> one class-index PNG per image.

Outputs under ``OUT``:

- ``labels/<stem>.png``   palette PNG of class indices (0 = background)
- ``parts/<stem>.json``   per image: its instances (COCO RLE), the label's digest and the image
  file's; written after the PNG, so it marks the image finished (resume skips it, unless the
  image file changed since: then it is labelled again and named in the run's ``images_changed``)
- ``pseudo_labels.json``  COCO with the pseudo-label instances (RLE), assembled from the parts
- ``manifest.json``       settings, per-image status and digests, failed images
- ``report.json`` / ``report.md``  mIoU, per-class IoU, mACC, Dice — when GT exists
- ``vis/<stem>.png``      overlays, with ``visualize=True``
- ``runs.jsonl``          one line per run: timings, cache hits (the only file that differs
  between identical runs)

Every file is written atomically (temporary file + rename): a killed run leaves
whole files only, and a re-run redoes exactly the unfinished images. Both
executors run :func:`label_one` per image, so their outputs are byte-identical.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

from wsseg_fast.config import at_least, require
from wsseg_fast.data import CocoWeakDataset, ImageLoadError
from wsseg_fast.data.labels import encode_label_png, palette, read_label_png
from wsseg_fast.errors import UserError
from wsseg_fast.io import (
    TMP_PREFIX,
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    file_digest,
)
from wsseg_fast.metrics import SegmentationMeter, markdown_table
from wsseg_fast.pipelines.crf import crf_refine
from wsseg_fast.pipelines.label_maps import encode_soft
from wsseg_fast.pipelines.methods import METHODS, MethodInput, parse_options, resolve
from wsseg_fast.pipelines.ray_executor import run_ray
from wsseg_fast.sam.settings import EncoderSettings

OUTPUT_VERSION = 1
_TEST_DELAY = float(os.environ.get("WSSEG_FAST_TEST_DELAY", "0") or 0)


class JobError(UserError):
    """A setting or an output directory the job cannot use (printed as one line by the CLI)."""


@dataclass
class JobConfig(EncoderSettings):
    coco: str
    """COCO JSON with the weak annotations."""

    out: str
    """Output directory; re-running the same command resumes it."""

    images: str | None = None
    """Image directory (default: images/ beside the JSON)."""

    method: str = "sam-box"
    """sam-box (default), sam-point, box, ... (see --list-methods)."""

    options: dict = field(default_factory=dict)
    """The method's settings, KEY=VALUE (see --list-methods)."""

    finetuned: str | None = None
    """A fine-tuned mask-decoder state dict (from finetune) loaded over the checkpoint's decoder."""

    device: str = "cpu"
    """Where SAM runs."""

    batch_size: int = 1
    """Images per encoder batch."""

    visualize: bool = False
    """Also write overlays to OUT/vis/."""

    gt: str | None = None
    """Ground-truth label PNG directory (<stem>.png) for the report (default: the COCO segmentation)."""

    threads: int | None = None
    """torch CPU threads per process."""

    refine: Literal["crf"] | None = None
    """Refine every label map after the method: crf = dense CRF (mean field)."""

    executor: Literal["local", "ray"] = "local"
    """Where images are labelled: this process, or a Ray cluster."""

    ray_address: str | None = None
    """Ray cluster address (default: start Ray locally)."""

    workers: int | None = None
    """Ray workers (default: the CPUs Ray sees)."""

    overwrite: bool = False
    """Discard outputs in OUT made with other settings (same settings: resume)."""

    def validate(self) -> None:
        super().validate()
        require(self.method in METHODS, f"unknown method {self.method!r}; methods: {', '.join(sorted(METHODS))}")
        self.options = parse_options(self.method, self.options)
        at_least(1, batch_size=self.batch_size)

    def settings(self, weights: str | None, finetuned: str | None) -> dict:
        """What the outputs depend on: a re-run with other settings must not mix with them."""
        sam = METHODS[self.method].needs_sam
        embedding = self.embedding_numerics() if sam else None
        files = {}
        for name in METHODS[self.method].files:  # by content: a file replaced under its name is other settings
            path = self.options[name]
            if path:
                require(os.path.isfile(path), f"--method-option {name}={path}: no such file")
                files[name] = file_digest(path)
        return {
            "version": OUTPUT_VERSION,
            "method": self.method,
            "options": self.options,
            "model": self.model if sam else None,
            "embedding": embedding,
            "weights": weights,
            "finetuned": finetuned,
            "coco": file_digest(self.coco),
            **({"refine": self.refine} if self.refine else {}),
            **({"files": files} if files else {}),
        }


class Labeller:
    """Everything needed to label images of one dataset; built once per process
    (the local run, or each Ray worker)."""

    def __init__(self, cfg: JobConfig):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.method = METHODS[cfg.method]
        self.options = cfg.options
        self.dataset = CocoWeakDataset(cfg.coco, cfg.images)
        if self.method.check is not None:  # the options against the dataset, before SAM or any output
            self.method.check(self.options, tuple(self.dataset.class_names))
        self.engine = None
        if self.method.needs_sam:
            self.engine = cfg.engine(cfg.device, cfg.finetuned)
        os.makedirs(os.path.join(cfg.out, "labels"), exist_ok=True)
        os.makedirs(os.path.join(cfg.out, "parts"), exist_ok=True)

    def label_one(self, index: int, embedding=None) -> dict:
        """Label image ``index`` of the dataset and write its outputs; returns its part record.
        A bad image gives a ``failed`` record (and no files) instead of an exception."""

        record = self.dataset.images[index]
        try:
            digest = _image_digest(record)
            image = self.dataset.load_image(record)
        except ImageLoadError as exc:
            return {"image_id": record.id, "file_name": record.file_name, "status": "failed", "error": str(exc)}
        return self._label(record, image, digest, embedding)

    def _label(self, record, image: np.ndarray, digest: str | None, embedding=None) -> dict:
        """``digest``: the image file's, read before its pixels (a file replaced in between is
        labelled again by the next run, never kept under the new file's digest)."""
        h, w = image.shape[:2]
        boxes, classes = self.dataset.boxes(record)
        anns = [a for a in record.annotations if "bbox" in a]
        runs = len(boxes) > 0 or not self.method.needs_boxes  # a prompt-free method labels box-less images too
        if self.method.needs_sam and runs and embedding is None:
            embedding = self.engine.embed([image], batch_size=1)[0]
        ctx = MethodInput(
            image, boxes, classes, anns, self.options, self.engine, embedding, tuple(self.dataset.class_names)
        )
        if runs:
            instances = self.method.fn(ctx)
            label, winner = resolve(instances, h, w)
        else:  # no object: all background
            instances, label, winner = None, np.zeros((h, w), np.uint8), None
        if self.cfg.refine == "crf" and instances is not None:
            refined = crf_refine(image, label)
            winner = np.where(refined == label, winner, -1)  # instances keep the pixels whose class the CRF kept
            label = refined
        png = encode_label_png(label)
        out = self.cfg.out
        atomic_write_bytes(os.path.join(out, "labels", record.stem + ".png"), png)
        soft = None
        if instances is not None and instances.class_scores is not None:
            soft = f"soft/{record.stem}.npz"
            os.makedirs(os.path.join(out, "soft"), exist_ok=True)
            atomic_write_bytes(os.path.join(out, soft), encode_soft(instances.class_scores))
        if self.cfg.visualize:
            os.makedirs(os.path.join(out, "vis"), exist_ok=True)
            atomic_write_bytes(os.path.join(out, "vis", record.stem + ".png"), overlay(image, label, boxes))
        part = {
            "image_id": record.id,
            "file_name": record.file_name,
            "status": "done",
            "label": f"labels/{record.stem}.png",
            "label_blake2b": hashlib.blake2b(png, digest_size=16).hexdigest(),
            **({"image_blake2b": digest} if digest else {}),
            "instances": _instances_json(record, anns, instances, winner) if instances is not None else [],
            **({"soft": soft} if soft else {}),
        }
        atomic_write_json(os.path.join(out, "parts", record.stem + ".json"), part)
        if _TEST_DELAY:  # lets the SIGKILL test land between images
            time.sleep(_TEST_DELAY)
        return part


def _image_digest(record) -> str | None:
    try:
        return file_digest(record.path)
    except OSError:  # load_image says what is wrong with it
        return None


def _instances_json(record, anns, instances, winner) -> list[dict]:
    """Each instance's final pixels (after overlaps were resolved) as COCO RLE."""

    out = []
    if len(instances.scores) != len(anns):  # prompt-free methods (prompter): instances are not the annotations
        for i in range(len(instances.scores)):
            mask = winner == i
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            out.append(
                {
                    "source_annotation_id": None,
                    "image_id": record.id,
                    "class_index": int(instances.classes[i]),
                    "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "area": int(mask.sum()),
                    "score": round(float(instances.scores[i]), 6),
                }
            )
        return out
    for i, ann in enumerate(anns):
        mask = winner == i
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        out.append(
            {
                "source_annotation_id": ann.get("id"),
                "image_id": record.id,
                "category_id": int(ann["category_id"]),
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": int(mask.sum()),
                "bbox": [float(v) for v in ann["bbox"]],
                "score": round(float(instances.scores[i]), 6),
            }
        )
    return out


def overlay(image: np.ndarray, label: np.ndarray, boxes: np.ndarray) -> bytes:
    """PNG bytes: the image with the label's palette colours blended in and the boxes drawn."""

    colours = np.array(palette(), np.float32).reshape(256, 3)
    blended = image.astype(np.float32)
    fg = label > 0
    blended[fg] = 0.45 * blended[fg] + 0.55 * colours[label[fg]]
    canvas = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for x0, y0, x1, y1 in boxes.tolist():
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 255))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


# -- the job -----------------------------------------------------------------------------


def _prepare_out(cfg: JobConfig, labeller: Labeller, overwrite: bool) -> dict:
    engine = labeller.engine
    settings = cfg.settings(
        engine.identity["weights"] if engine else None, file_digest(cfg.finetuned) if cfg.finetuned else None
    )
    path = os.path.join(cfg.out, "settings.json")
    previous = None
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
    if previous is not None and previous != settings:
        if not overwrite:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise JobError(
                f"{cfg.out} holds pseudo-labels made with other settings ({', '.join(changed)} differ): "
                "use another --out, or --overwrite to start again"
            )
        for sub in ("labels", "parts", "vis", "soft"):
            shutil.rmtree(os.path.join(cfg.out, sub), ignore_errors=True)
        for name in ("report.json", "report.md", "manifest.json", "pseudo_labels.json"):
            if os.path.exists(os.path.join(cfg.out, name)):
                os.unlink(os.path.join(cfg.out, name))
        os.makedirs(os.path.join(cfg.out, "labels"), exist_ok=True)
        os.makedirs(os.path.join(cfg.out, "parts"), exist_ok=True)
    atomic_write_json(path, settings)
    for sub in ("labels", "parts", "vis", "soft", "."):  # half-written files of a killed run (never visible as outputs)
        directory = os.path.join(cfg.out, sub)
        for name in os.listdir(directory) if os.path.isdir(directory) else ():
            if name.startswith(TMP_PREFIX):
                os.unlink(os.path.join(directory, name))
    return settings


def finished_images(cfg: JobConfig, dataset, changed: list[str] | None = None) -> set[int]:
    """Indices of images whose part record (and label PNG) exist and agree, and whose image file
    is the one that was labelled; the file names of images replaced since are added to ``changed``."""

    done = set()
    for i, record in enumerate(dataset.images):
        part_path = os.path.join(cfg.out, "parts", record.stem + ".json")
        label_path = os.path.join(cfg.out, "labels", record.stem + ".png")
        try:
            with open(part_path) as f:
                part = json.load(f)
            with open(label_path, "rb") as f:
                ok = hashlib.blake2b(f.read(), digest_size=16).hexdigest() == part.get("label_blake2b")
        except (FileNotFoundError, ValueError):
            continue
        soft = part.get("soft")  # a method's soft maps are outputs too
        if part.get("status") == "done" and ok and (soft is None or os.path.isfile(os.path.join(cfg.out, soft))):
            image = part.get("image_blake2b")  # absent from parts written before it was recorded
            if image is not None and os.path.isfile(record.path) and file_digest(record.path) != image:
                if changed is not None:
                    changed.append(record.file_name)
                continue
            done.add(i)
    return done


def run_pseudo_label(cfg: JobConfig, progress: bool = True) -> dict:
    """Run the job (resuming where a previous run stopped); returns a summary."""

    start = time.perf_counter()
    labeller = Labeller(cfg)
    settings = _prepare_out(cfg, labeller, cfg.overwrite)
    dataset = labeller.dataset
    changed: list[str] = []
    done = finished_images(cfg, dataset, changed)
    todo = [i for i in range(len(dataset)) if i not in done]
    failed: dict[int, str] = {}
    remote_hits = remote_encoded = 0
    bar = tqdm(total=len(todo), unit="img", desc=f"pseudo-label {cfg.method}", disable=not progress, dynamic_ncols=True)
    if cfg.executor == "local":
        for part_index, part in _run_local(labeller, todo):
            if part["status"] != "done":
                failed[part_index] = part["error"]
                bar.write(f"skipped: {part['error']}")
            bar.update(1)
    else:
        for part_index, part in run_ray(Labeller, cfg, todo, address=cfg.ray_address, workers=cfg.workers):
            remote_hits += part.pop("_cache_hits", 0)
            remote_encoded += part.pop("_encoded", 0)
            if part["status"] != "done":
                failed[part_index] = part["error"]
                bar.write(f"skipped: {part['error']}")
            bar.update(1)
    bar.close()
    labelling_seconds = time.perf_counter() - start

    summary = finalize(cfg, labeller, settings, failed)
    stats = labeller.engine.stats if labeller.engine else None
    run = {
        "executor": cfg.executor,
        "images_total": len(dataset),
        "images_skipped_as_done": len(done),
        "images_labelled": len(todo) - len(failed),
        "images_failed": len(failed),
        "images_changed": changed,
        "seconds": round(time.perf_counter() - start, 3),
        "labelling_seconds": round(labelling_seconds, 3),
        "cache_hits": (stats.cache_hits if stats else 0) + remote_hits,
        "encoded": (stats.encoded if stats else 0) + remote_encoded,
    }
    append_jsonl(os.path.join(cfg.out, "runs.jsonl"), run)
    return {**summary, "run": run}


def _run_local(labeller: Labeller, todo: list[int]):
    """Label images in order; with ``batch_size > 1`` the embeddings of the next
    images are computed in one encoder batch first."""

    batch = max(1, labeller.cfg.batch_size)

    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        if batch == 1 or not labeller.method.needs_sam:
            for i in chunk:
                yield i, labeller.label_one(i)
            continue
        loaded, digests = {}, {}
        for i in chunk:
            record = labeller.dataset.images[i]
            try:
                digests[i] = _image_digest(record)
                loaded[i] = labeller.dataset.load_image(record)
            except ImageLoadError as exc:
                yield i, {"image_id": record.id, "file_name": record.file_name, "status": "failed", "error": str(exc)}
        embeddings = labeller.engine.embed(list(loaded.values()), batch_size=batch)
        for (i, image), emb in zip(loaded.items(), embeddings):
            yield i, labeller._label(labeller.dataset.images[i], image, digests[i], emb)


def finalize(cfg: JobConfig, labeller: Labeller, settings: dict, failed: dict[int, str]) -> dict:
    """Assemble the COCO file, the manifest and the evaluation report from the parts on disk."""

    dataset = labeller.dataset
    images, annotations, entries, errors = [], [], [], []
    meter = SegmentationMeter(dataset.num_classes, dataset.class_names)
    evaluated = 0
    for i, record in enumerate(dataset.images):
        part_path = os.path.join(cfg.out, "parts", record.stem + ".json")
        if i in failed or not os.path.exists(part_path):
            errors.append(
                {"image_id": record.id, "file_name": record.file_name, "error": failed.get(i, "not labelled")}
            )
            continue
        with open(part_path) as f:
            part = json.load(f)
        entries.append(
            {
                "image_id": record.id,
                "file_name": record.file_name,
                "label": part["label"],
                "label_blake2b": part["label_blake2b"],
                **({"image_blake2b": part["image_blake2b"]} if "image_blake2b" in part else {}),
                "instances": len(part["instances"]),
            }
        )
        label = read_label_png(os.path.join(cfg.out, part["label"]))
        images.append(
            {"id": record.id, "file_name": record.file_name, "height": label.shape[0], "width": label.shape[1]}
        )
        for inst in part["instances"]:
            annotations.append({"id": len(annotations) + 1, **inst})
        gt = _ground_truth(cfg, dataset, record, label.shape)
        if gt is not None:
            meter.update(torch.from_numpy(label.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)))
            evaluated += 1
    atomic_write_json(
        os.path.join(cfg.out, "pseudo_labels.json"),
        {
            "info": {"description": f"wsseg_fast pseudo-labels ({cfg.method})"},
            "categories": dataset.categories,
            "images": images,
            "annotations": annotations,
        },
    )
    atomic_write_json(
        os.path.join(cfg.out, "manifest.json"),
        {"settings": settings, "class_names": dataset.class_names, "images": entries, "failed": errors},
    )
    report = None
    if evaluated:
        scores = meter.compute()
        report = {"method": cfg.method, "images_evaluated": evaluated, **scores}
        atomic_write_json(os.path.join(cfg.out, "report.json"), report)
        title = f"Pseudo-labels ({cfg.method}) vs ground truth, {evaluated} images"
        atomic_write_bytes(os.path.join(cfg.out, "report.md"), markdown_table(scores, title).encode())
    return {"labelled": len(entries), "failed": errors, "report": report}


def _ground_truth(cfg: JobConfig, dataset, record, shape) -> np.ndarray | None:
    if cfg.gt is not None:
        path = os.path.join(cfg.gt, record.stem + ".png")
        return read_label_png(path) if os.path.exists(path) else None
    return dataset.gt_label_map(record, *shape) if any("segmentation" in a for a in record.annotations) else None
