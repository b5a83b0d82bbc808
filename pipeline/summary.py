"""Short human summaries of a finished stage, printed as the last lines of its command.

Each stage's ``stage.json`` already holds a machine-readable summary; people want three lines:
what was built and where, the counts and the time it took, and the headline figure (maps written,
final losses, top-1 / top-5, R@k). ``--json`` keeps the machine-readable form instead. Works from
the record alone, so it also summarises a stage that was already done (nothing rebuilt).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pipeline.core.stats import format_estimate, format_interval


def _pct(value: Any) -> str:
    return f"{100 * float(value):.1f}%" if isinstance(value, (int, float)) else "?"


def _num(value: Any, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if isinstance(value, (int, float)) else "?"


def _vs(value: Any, chance: Any) -> str:
    """``41.2% (chance 10.0%)``: every accuracy or recall beside the figure a guess would get."""
    return _pct(value) + (f" (chance {_pct(chance)})" if isinstance(chance, (int, float)) else "")


def _class_chance(s: dict[str, Any], k: int = 1) -> float | None:
    """Top-k chance from a record's ``chance_top{k}``, else from its class count (older records)."""
    if isinstance(s.get(f"chance_top{k}"), (int, float)):
        return float(s[f"chance_top{k}"])
    classes = s.get("num_classes") or len(s.get("per_class") or {})
    return min(k, classes) / classes if classes else None


def _n(count: Any, word: str) -> str:
    """``1 epoch`` / ``8 epochs`` / ``? epochs``."""
    return f"{count} {word}" if count == 1 else f"{count if count is not None else '?'} {word}s"


def _synthetic(s: dict[str, Any]) -> list[str]:
    return [f"{s.get('videos', '?')} videos of {len(s.get('classes', []))} classes, {s.get('frames', '?')} frames each"]


def _manifest(s: dict[str, Any]) -> list[str]:
    splits = ", ".join(f"{k} {v}" for k, v in sorted(s.get("per_split", {}).items()))
    line = f"{s.get('videos', '?')} usable videos ({splits}), {s.get('classes', '?')} classes"
    rejected = s.get("rejected", 0)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.get("rejected_by_reason", {}).items()))
    return [line, f"rejected {rejected}" + (f" ({reasons}; see rejected.jsonl)" if rejected else "")]


def _teacher_cache(s: dict[str, Any]) -> list[str]:
    return [f"{s.get('clips_computed', s.get('clips', '?'))} teacher maps written ({s.get('teacher', '?')} teacher, "
            f"{s.get('labels', '?')} labels, {s.get('map_size', '?')}² maps) in {s.get('shards', '?')} shards; "
            f"failed {s.get('failed', 0)}",
            f"{_num(s.get('clips_per_s'), 1)} clips/s"]


def _transcode(s: dict[str, Any]) -> list[str]:
    return [f"{s.get('videos', '?')} videos copied" + (f", {s['failed']} failed" if s.get("failed") else "")]


def _pretrain(s: dict[str, Any]) -> list[str]:
    final = s.get("final", {})
    losses = ", ".join(f"{k.replace('loss_', '')} {_num(v)}" for k, v in sorted(final.items()) if k.startswith("loss_"))
    return [f"{_n(s.get('epochs'), 'epoch')}, {_n(s.get('steps'), 'step')} on {s.get('videos', '?')} videos "
            f"({s.get('clips', '?')} clips), global batch {s.get('global_batch', '?')}, {s.get('device', '?')}",
            f"final loss {_num(final.get('loss'))}" + (f" ({losses})" if losses else "")
            + f"; {_num(s.get('clips_per_s'), 2)} clips/s; encoder in student.pt (pipeline export writes it for "
              f"other codebases)"] + _heldout(s.get("heldout"), s.get("heldout_untrained"),
                                                                    s.get("heldout_gain"))


def _heldout(trained: dict[str, Any] | None, untrained: dict[str, Any] | None,
             gain: dict[str, Any] | None = None) -> list[str]:
    """The held-out pretext figures (student/pretext_eval.py), each beside the untrained network's, and the
    paired gains over it with their 95 % intervals when measured over several views."""
    if not trained:
        return []
    u = untrained or {}

    def pair(key: str) -> str:
        return f"{format_estimate(trained, key, '?')} (untrained {format_estimate(u, key, '?')})"
    views = int(trained.get("heldout_views") or 1)
    per = f", {views} views per video, ± standard error" if views > 1 else ""
    return [f"held-out videos: RSP {pair('rsp_acc')}; A-VID top-1 {pair('avid_top1')} of {trained.get('avid_gallery')} "
            f"(chance {_num(trained.get('avid_chance'))}{per}); KD person IoU {pair('kd_person_iou')}, "
            f"part mIoU {pair('kd_part_miou')}"] + _gains(gain or {})


def _gains(gain: dict[str, Any]) -> list[str]:
    names = {"rsp_acc": "RSP", "avid_top1": "A-VID top-1"}
    parts = [f"{names.get(k, k)} {format_interval(g)}" for k, g in gain.items()
             if isinstance(g, dict) and {"mean", "low", "high"} <= set(g)]
    if not parts:
        return []
    views = next(iter(gain.values())).get("views", "?")
    return [f"trained − untrained, paired over {views} views (95 % interval): " + "; ".join(parts)]


def _finetune(s: dict[str, Any]) -> list[str]:
    proto = s.get("protocol", {})
    return [f"{_n(s.get('epochs'), 'epoch')} ({proto.get('name', '?')} protocol, lr {proto.get('lr', '?')}, batch "
            f"{proto.get('batch_size', '?')}) on {s.get('num_train', '?')} train videos, {s.get('num_classes', '?')} "
            f"classes" + (", from scratch" if s.get("from_scratch") else ", from the pretrained student"),
            f"final train loss {_num(s.get('final_train_loss'))}; kept epoch {s.get('selected_epoch', '?')} "
            f"(selected on {s.get('selected_on', '?')}); classifier.pt"]


def _evaluate(s: dict[str, Any]) -> list[str]:
    c1, c5 = _class_chance(s, 1), _class_chance(s, 5)
    line = (f"{s.get('num_videos', s.get('videos', '?'))} {s.get('split', 'test')} videos x "
            f"{s.get('views_per_video', '?')} views: video-level top-1 {_vs(s.get('video_top1'), c1)}, "
            f"top-5 {_vs(s.get('video_top5'), c5)}")
    return [line, f"clip-level top-1 {_vs(s.get('clip_top1'), c1)}, top-5 {_vs(s.get('clip_top5'), c5)}; "
                  f"mean class accuracy {_vs(s.get('mean_class_accuracy'), c1)}"
            + ("; epoch chosen on the test split" if s.get("test_selected") else "")] + _test_set(s)


def _test_set(s: dict[str, Any]) -> list[str]:
    """An out-of-context test set (student/out_of_context.py): its top-1 beside the in-distribution one."""
    if "test_set" not in s:
        return []
    over = (f" over the {s['classes_covered']} classes it covers" if s.get("classes_covered") is not None else "")
    return [f"test set {s['test_set']}: top-1 {_pct(s.get('test_set_top1'))}{over}; in-distribution top-1 "
            f"{_pct(s.get('in_distribution_top1'))}; drop {_num(s.get('drop_points'), 1)} points"]


def _retrieval(s: dict[str, Any]) -> list[str]:
    recall = s.get("recall", {})
    ks = sorted(recall, key=lambda k: int(k.split("@")[1]))
    return [f"{s.get('num_queries', '?')} test videos query {s.get('num_gallery', '?')} train videos "
            f"({s.get('dataset', '?')}, {s.get('clips', '?')} clips each, {s.get('distance', 'cosine')})",
            ", ".join(f"{k} {_vs(recall[k], s.get('chance', {}).get(k))}" for k in ks)]


def _linear_probe(s: dict[str, Any]) -> list[str]:
    if "test_set" in s:
        return [f"linear probe of {s.get('dataset', '?')} on {s.get('num_test', '?')} test-set videos "
                f"({s.get('level', '?')})"] + _test_set(s)
    held = s.get("heldout_top1")
    return [f"logistic regression on frozen {s.get('feature_dim', '?')}-d features: {s.get('num_train', '?')} train, "
            f"{s.get('num_test', '?')} test videos, {s.get('num_classes', '?')} classes",
            f"weight decay {s.get('weight_decay', '?')} chosen on {s.get('weight_decay_chosen_on', '?')}",
            f"video-level top-1 {_vs(s.get('top1'), _class_chance(s, 1))}, "
            f"top-5 {_vs(s.get('top5'), _class_chance(s, 5))}"
            f" (train top-1 {_pct(s.get('train_top1'))}"
            + (f", held-out top-1 {_pct(held)}" if isinstance(held, (int, float)) else "") + ")"]


SUMMARIES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "synthetic": _synthetic, "manifest": _manifest, "teacher-cache": _teacher_cache, "transcode": _transcode,
    "pretrain": _pretrain, "finetune": _finetune, "evaluate": _evaluate, "retrieval": _retrieval,
    "linear-probe": _linear_probe,
}


def summary_lines(record: dict[str, Any], out: Path) -> list[str]:
    """The human summary of a stage record (``stage.json``): a title line, then indented details."""
    stage, name = record.get("stage", "?"), record.get("name", "?")
    build_s = record.get("timings", {}).get("build_s")
    head = f"{stage} {name}: {out}" + (f" (built in {float(build_s):.1f} s)" if build_s is not None else "")
    summary = record.get("summary") or {}
    try:
        body = SUMMARIES.get(stage, lambda s: [])(summary)
    except (TypeError, ValueError, KeyError, AttributeError):  # an older record: never fail a finished stage
        body = []
    return [head] + [f"  {line}" for line in body]


__all__ = ["SUMMARIES", "summary_lines"]
