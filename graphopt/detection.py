"""Compare two runtimes' object detections as detections, not as arrays.

A detection head ends in ops that sort by score (``_contrib_box_nms``, ``topk``,
``_contrib_MultiBoxDetection``). Two faithful runtimes may order equal scores differently:
MXNet's CPU ``topk`` sorts with ``std::partial_sort``/``std::sort``, whose order of equal
elements is unspecified, while ONNX ``TopK`` puts the lower index first (``box_nms`` sorts
stably, and its export keeps that order). And a rounding difference of 1e-7 between two
near-equal scores swaps two rows, or moves a box across an NMS threshold, in any runtime. The
element-wise comparison then reads as a wrong model (relative error near 1) although both
runtimes found the same objects, and random weights make it common: a saturated sigmoid gives
thousands of scores of exactly 1.0 (measured: 25,606 of GluonCV CenterNet's heatmap values with
He-initialised weights), and those are ties for ``topk``.

So detection outputs are compared as sets, per image:

- every MXNet detection (class, score, box), highest score first, is matched to the unmatched
  ONNX detection of the same class whose score is within ``score_tolerance`` and whose box
  overlaps it most, if that overlap (IoU) is at least ``iou``;
- a detection left without a partner is *tied* when its score (within ``score_tolerance``) is
  shared by two or more detections of the image on one side, any class: which of equal scores
  a sort keeps is the runtime's choice. Any other unmatched detection is a real difference: a
  score held by one detection on each side is one detection that the runtimes place, class or
  score differently. (Two overlapping boxes of near-equal scores that NMS keeps one of, each
  runtime another, therefore read as a difference: the outputs cannot tell that apart from a
  moved box, and a false alarm that names the boxes is better than a silent pass.)
- the verdict: no real difference. Tied ones are counted and reported, never hidden.

Layouts recognised (MXNet's outputs, ``B`` images of ``N`` rows):

- three outputs ids ``(B, N[, 1])``, scores ``(B, N[, 1])``, boxes ``(B, N, 4)`` (GluonCV's SSD,
  YOLOv3, Faster R-CNN and CenterNet); the ids are the output whose values are all whole numbers
  (the first one if both are), and without an ids output every detection is class 0;
- one output of rows ``[id, score, x1, y1, x2, y2]`` (``B, N, 6``), as ``box_nms`` and
  ``MultiBoxDetection`` write them.

Rows with a negative id (or, without ids, a negative score) are padding: ``box_nms`` fills its
output with rows of -1 and ``MultiBoxDetection`` marks suppressed boxes with id -1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph

SORTING_OPS = frozenset({"_contrib_box_nms", "_contrib_box_non_maximum_suppression", "topk",
                         "_contrib_MultiBoxDetection", "_contrib_Proposal",
                         "_contrib_MultiProposal", "sort", "argsort"})
"""Ops whose output order depends on how ties in a score are broken."""

LAYER_NOTES = {
    **{op: "it sorts by score: inputs that agree within rounding can still order near-equal "
           "scores differently (compare the outputs as detections)" for op in SORTING_OPS},
    "_contrib_ROIAlign": "MXNet 1.9.1's CPU kernel skips ROIs whose batch index is negative and "
                         "leaves their rows unwritten (whatever the memory held); the export "
                         "writes the zeros MXNet documents",
}
"""What ``compare --per-layer`` adds when a layer of these ops diverges."""

DEFAULT_IOU = 0.9
"""Boxes of one detection in two faithful runtimes overlap almost exactly (float rounding moves
a corner by 1e-5 of the box size); 0.9 leaves room for the rounding that ``exp`` in a box
decoder amplifies, and still tells apart two neighbouring objects."""

DEFAULT_SCORE_TOLERANCE = 1e-4
"""Scores are probabilities in [0, 1]; a faithful export of a deep detector moves them by about
1e-5 (float32 rounding through a ResNet-50, measured), so 1e-4 leaves a factor 10."""


@dataclass
class DetectionLayout:
    """Where the detections are among a model's outputs (MXNet's output names)."""
    boxes: str
    scores: str
    ids: str | None = None
    rows: bool = False  # one output of rows [id, score, x1, y1, x2, y2]

    @property
    def names(self) -> list[str]:
        return [name for name in dict.fromkeys([self.ids, self.scores, self.boxes]) if name]

    def extract(self, outputs: Mapping[str, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (B, N), scores (B, N), boxes (B, N, 4)) as float64."""
        if self.rows:
            rows = np.asarray(outputs[self.boxes], dtype=np.float64)
            return rows[..., 0], rows[..., 1], rows[..., 2:6]
        boxes = np.asarray(outputs[self.boxes], dtype=np.float64)
        scores = np.asarray(outputs[self.scores], dtype=np.float64).reshape(boxes.shape[:-1])
        ids = (np.zeros_like(scores) if self.ids is None else
               np.asarray(outputs[self.ids], dtype=np.float64).reshape(boxes.shape[:-1]))
        return ids, scores, boxes

    def describe(self) -> str:
        if self.rows:
            return f"rows [id, score, x1, y1, x2, y2] of {self.boxes}"
        return f"ids {self.ids or '(none: one class)'}, scores {self.scores}, boxes {self.boxes}"


def find_layout(outputs: Mapping[str, np.ndarray]) -> DetectionLayout | None:
    """The detection layout among ``outputs`` (name -> array, in the model's output order),
    or ``None`` when none fits."""
    names = list(outputs)
    for boxes in names:
        shape = np.shape(outputs[boxes])
        if len(shape) != 3:
            continue
        if shape[-1] == 6:
            return DetectionLayout(boxes=boxes, scores=boxes, ids=boxes, rows=True)
        if shape[-1] != 4:
            continue
        partners = [name for name in names if name != boxes
                    and np.shape(outputs[name]) in (shape[:2], shape[:2] + (1,))]
        if not partners:
            continue
        whole = [name for name in partners if _whole_numbers(outputs[name])]
        ids = whole[0] if whole and len(partners) > 1 else None
        scores = next(name for name in partners if name != ids)
        return DetectionLayout(boxes=boxes, scores=scores, ids=ids)
    return None


def _whole_numbers(array: np.ndarray) -> bool:
    array = np.asarray(array)
    return array.dtype.kind in "iub" or bool(np.all(np.mod(array, 1) == 0))


def sorting_ops(graph: Graph) -> list[str]:
    """The nodes the model's outputs depend on that sort by score (a detection head has one, a
    two-stage detector one per stage or more)."""
    return sorted(name for name in graph.live_nodes() if graph.node(name).op in SORTING_OPS)


def judge_detections(graph: Graph, reference: Mapping[str, np.ndarray],
                     actual: Mapping[str, np.ndarray], mode: bool | None = None,
                     iou: float = DEFAULT_IOU, score_tolerance: float = DEFAULT_SCORE_TOLERANCE
                     ) -> DetectionReport | None:
    """The detection comparison of MXNet's outputs (``reference``) with onnxruntime's
    (``actual``, keyed by MXNet's output names), or ``None`` when there is none to make.
    ``mode``: ``None`` compares when the model sorts by score and a layout is found, ``True``
    insists (and raises :class:`~graphopt.errors.GraphoptError` if no layout fits), ``False``
    never compares."""
    sorting = sorting_ops(graph)
    if mode is False or (mode is None and not sorting):
        return None
    layout = find_layout(reference)
    if layout is None:
        if mode:
            shapes = {name: np.shape(value) for name, value in reference.items()}
            raise GraphoptError(f"no detection outputs among {shapes}: expected ids (B, N[, 1]), "
                                "scores (B, N[, 1]) and boxes (B, N, 4), or rows (B, N, 6) of "
                                "[id, score, x1, y1, x2, y2]", file=graph.source.get("symbol"))
        return None
    if any(name not in actual or np.shape(actual[name]) != np.shape(reference[name])
           for name in layout.names):
        return None  # a missing or misshapen output already fails the element-wise comparison
    report = compare_detections(layout, reference, actual, iou, score_tolerance)
    report.sorting_ops = sorting
    return report


# --- matching ----------------------------------------------------------------------------------

@dataclass
class DetectionReport:
    """What matching the detections found, over every image."""
    layout: DetectionLayout
    iou: float
    score_tolerance: float
    mxnet_detections: int = 0
    onnx_detections: int = 0
    matched: int = 0
    tied_mxnet: int = 0        # unmatched, but among equal scores
    tied_onnx: int = 0
    unmatched_mxnet: list[dict[str, Any]] = field(default_factory=list)   # real differences
    unmatched_onnx: list[dict[str, Any]] = field(default_factory=list)
    max_score_error: float = 0.0     # over matched pairs
    min_iou: float = 1.0
    max_box_error: float = 0.0
    sorting_ops: list[str] = field(default_factory=list)  # of the model, when known

    @property
    def ok(self) -> bool:
        return not self.unmatched_mxnet and not self.unmatched_onnx

    def to_dict(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in self.__dataclass_fields__ if key != "layout"}
        out["layout"] = {"ids": self.layout.ids, "scores": self.layout.scores,
                         "boxes": self.layout.boxes, "rows": self.layout.rows}
        out["ok"] = self.ok
        return out

    def format(self) -> list[str]:
        lines = [f"detections ({self.layout.describe()}): matched by class, score within "
                 f"{self.score_tolerance:g} and IoU >= {self.iou:g}",
                 f"  MXNet {self.mxnet_detections}, ONNX {self.onnx_detections}, matched "
                 f"{self.matched}; matched pairs: max score error {self.max_score_error:.3g}, "
                 f"min IoU {self.min_iou:.4g}, max box error {self.max_box_error:.3g}"]
        tied = self.tied_mxnet + self.tied_onnx
        if tied:
            lines.append(f"  {self.tied_mxnet} MXNet and {self.tied_onnx} ONNX detection(s) "
                         f"unmatched among equal scores (within {self.score_tolerance:g}): "
                         f"which of equal scores a sort keeps is the runtime's choice (MXNet's "
                         f"topk leaves their order unspecified, ONNX TopK puts the lower index "
                         f"first; rounding swaps near-equal ones), not an error")
            if tied > self.matched:
                lines.append("  most detections are tied: the comparison says little about "
                             "these inputs (saturated scores; random weights often give them)")
        for side, unmatched in (("MXNet", self.unmatched_mxnet), ("ONNX", self.unmatched_onnx)):
            for entry in unmatched[:5]:
                lines.append(f"  only in {side}: image {entry['image']}, class {entry['id']:g}, "
                             f"score {entry['score']:.6g}, box {_box_text(entry['box'])}"
                             + (f", nearest other-side box IoU {entry['nearest_iou']:.3g}"
                                if entry.get("nearest_iou") is not None else ""))
            if len(unmatched) > 5:
                lines.append(f"  ... and {len(unmatched) - 5} more only in {side}")
        if not self.ok and len(self.sorting_ops) > 1:
            lines.append(f"  the model sorts by score {len(self.sorting_ops)} times "
                         f"({', '.join(self.sorting_ops[:4])}): a proposal that near-equal "
                         f"scores let through in one runtime only yields detections the other "
                         f"lacks; --per-layer shows where the runtimes part")
        lines.append(f"  detections: {'OK' if self.ok else 'FAIL'}")
        return lines


def _box_text(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in box) + "]"


def compare_detections(layout: DetectionLayout, reference: Mapping[str, np.ndarray],
                       actual: Mapping[str, np.ndarray], iou: float = DEFAULT_IOU,
                       score_tolerance: float = DEFAULT_SCORE_TOLERANCE) -> DetectionReport:
    """Match MXNet's detections (``reference``) with onnxruntime's (``actual``, keyed by the
    same output names); see the module docstring."""
    report = DetectionReport(layout=layout, iou=iou, score_tolerance=score_tolerance)
    expected, got = layout.extract(reference), layout.extract(actual)
    if expected[2].shape != got[2].shape:
        raise ValueError(f"detection outputs differ in shape: {expected[2].shape} in MXNet, "
                         f"{got[2].shape} in ONNX")
    for image in range(expected[2].shape[0]):
        _match_image(report, image, [part[image] for part in expected],
                     [part[image] for part in got])
    return report


def _valid(ids: np.ndarray, scores: np.ndarray, has_ids: bool) -> np.ndarray:
    return ids >= 0 if has_ids else scores >= 0


def _match_image(report: DetectionReport, image: int, expected, got) -> None:
    has_ids = report.layout.ids is not None
    sides = []
    for ids, scores, boxes in (expected, got):
        keep = _valid(ids, scores, has_ids)
        sides.append((np.round(ids[keep]), scores[keep], boxes[keep]))
    (m_ids, m_scores, m_boxes), (o_ids, o_scores, o_boxes) = sides
    report.mxnet_detections += len(m_scores)
    report.onnx_detections += len(o_scores)
    tolerance = report.score_tolerance
    taken = np.zeros(len(o_scores), dtype=bool)
    matched_m = np.zeros(len(m_scores), dtype=bool)
    for index in np.argsort(-m_scores, kind="stable"):
        candidates = np.flatnonzero(~taken & (o_ids == m_ids[index])
                                    & (np.abs(o_scores - m_scores[index]) <= tolerance))
        if not len(candidates):
            continue
        overlaps = box_iou(m_boxes[index], o_boxes[candidates])
        best = int(np.argmax(overlaps))
        if overlaps[best] < report.iou:
            continue
        partner = candidates[best]
        taken[partner] = matched_m[index] = True
        report.matched += 1
        report.max_score_error = max(report.max_score_error,
                                     float(abs(o_scores[partner] - m_scores[index])))
        report.min_iou = min(report.min_iou, float(overlaps[best]))
        report.max_box_error = max(report.max_box_error,
                                   float(np.abs(o_boxes[partner] - m_boxes[index]).max()))
    for side, keep, ids, scores, boxes, others, other_scores in (
            ("mxnet", matched_m, m_ids, m_scores, m_boxes, o_boxes, o_scores),
            ("onnx", taken, o_ids, o_scores, o_boxes, m_boxes, m_scores)):
        for index in np.flatnonzero(~keep):
            # tied: its score is shared by two detections on one side (itself counts once);
            # one detection per side at a score is the same detection, differing
            level = [np.count_nonzero(np.abs(values - scores[index]) <= tolerance)
                     for values in (scores, other_scores)]
            if max(level) > 1:
                setattr(report, f"tied_{side}", getattr(report, f"tied_{side}") + 1)
                continue
            nearest = float(box_iou(boxes[index], others).max()) if len(others) else None
            getattr(report, f"unmatched_{side}").append(
                {"image": image, "id": float(ids[index]), "score": float(scores[index]),
                 "box": [float(v) for v in boxes[index]], "nearest_iou": nearest})


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one corner box [x1, y1, x2, y2] with each of ``boxes``: 0 without overlap. Corners
    given in the wrong order (a model with random weights predicts negative sizes) are put in
    order first, since both runtimes compute the same such box; boxes without area have IoU 1
    with the same box (within float32 rounding) and 0 with any other."""
    box = np.asarray(box, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    near = np.all(np.abs(boxes - box) <= 1e-6 * max(1.0, float(np.abs(box).max())), axis=1)
    box = np.concatenate([np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])])
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                            np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)
    left = np.maximum(box[0], boxes[:, 0])
    top = np.maximum(box[1], boxes[:, 1])
    right = np.minimum(box[2], boxes[:, 2])
    bottom = np.minimum(box[3], boxes[:, 3])
    intersection = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = (np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
             * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    union = area + areas - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), near * 1.0)
