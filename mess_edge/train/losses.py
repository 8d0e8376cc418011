"""Training losses of sec. 4.3: exit-dropout (eq. 2), Positive Filtering Distillation (eq. 3) and baselines.

All take logits already at label resolution [B, C, H, W] and labels [B, H, W] with IGNORE = 255.
"""

import torch
from torch.nn import functional as F

IGNORE = 255


def ce(logits, labels):
    """Mean cross entropy over non-ignored pixels (0 when every pixel is ignored)."""
    # F.cross_entropy's mean over zero pixels is 0/0 = nan (a batch where the final exit is wrong everywhere
    # leaves pfd nothing to learn from): sum, then divide by at least one pixel.
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    return total / (labels != IGNORE).sum().clamp(min=1)


def kl_map(student_logits, teacher_logits):
    """KL(p_teacher || p_student) per pixel [B, H, W], the teacher detached."""
    log_p_s = F.log_softmax(student_logits, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach(), dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)


def kl_to_teacher(student_logits, teacher_logits, labels=None):
    """KL(p_teacher || p_student) per pixel, averaged over non-ignored pixels.

    The direction is the usual distillation one: the exit (student) is pulled towards the final exit's
    softmax (teacher), sum_c p_N log(p_N / p_i). The teacher is detached.
    """
    kl = kl_map(student_logits, teacher_logits)
    if labels is None:
        return kl.mean()
    valid = labels != IGNORE
    return kl[valid].sum() / valid.sum().clamp(min=1)


def positive_filter(teacher_logits, labels):
    """Labels with every pixel the final exit gets wrong set to IGNORE: the 1(y_N = y) mask of eq. 3."""
    pred = teacher_logits.detach().argmax(dim=1)
    return torch.where(pred == labels, labels, torch.full_like(labels, IGNORE))


# agree-easy: image b's loss is weighted by a_b ** EASY_POWER (a_b: the share of its pixels where the exit already
# agrees with the final exit), normalised to mean 1 over the batch: 0.9 ** 8 = 0.43 against 0.99 ** 8 = 0.92.
EASY_POWER = 8.0


def agreement_loss(logits, teacher_logits, labels, alpha=0.5, easy_power=0.0):
    """Per-image agreement with the final exit (issue 13: an exit must match the final exit on the images it takes,
    not be good on average): alpha * CE to the final exit's own labels on every labelled pixel (right or wrong
    there) + (1 - alpha) * KL to its softmax, averaged per image; with ``easy_power`` > 0 each image weighs
    a_b ** easy_power (a_b its current agreement, detached), so the exit specialises on the images that will
    leave there. No ground truth beyond the ignore mask: a label-free target, as the exit decision is."""
    valid = labels != IGNORE
    target = torch.where(valid, teacher_logits.detach().argmax(dim=1), torch.full_like(labels, IGNORE))
    ce_map = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    n = valid.flatten(1).sum(1).clamp(min=1).to(logits.dtype)
    per_image = ((alpha * ce_map + (1 - alpha) * kl_map(logits, teacher_logits)) * valid).flatten(1).sum(1) / n
    if easy_power <= 0:
        return per_image.mean()
    with torch.no_grad():
        agree = ((logits.argmax(dim=1) == target) & valid).flatten(1).sum(1).to(logits.dtype) / n
        w = agree.clamp(min=1e-3) ** easy_power
        w = w / w.mean().clamp(min=1e-12)
    return (w * per_image).mean()


def exit_loss(kind, logits, teacher_logits, labels, alpha=0.5):
    """Stage-2 loss of one exit. ``kind``: pfd (ours, eq. 3), ce, kd, selfdistill; agree, agree-easy
    (agreement_loss, without and with the easy-image weighting)."""
    if kind == "ce":
        return ce(logits, labels)
    if kind == "kd":
        return kl_to_teacher(logits, teacher_logits, labels)
    if kind == "selfdistill":
        return alpha * ce(logits, labels) + (1 - alpha) * kl_to_teacher(logits, teacher_logits, labels)
    if kind == "pfd":
        filtered = positive_filter(teacher_logits, labels)
        return alpha * ce(logits, filtered) + (1 - alpha) * kl_to_teacher(logits, teacher_logits, labels)
    if kind in ("agree", "agree-easy"):
        return agreement_loss(logits, teacher_logits, labels, alpha, EASY_POWER if kind == "agree-easy" else 0.0)
    raise ValueError("unknown loss {!r}".format(kind))


def stage1_exits(step, n_early, mode):
    """Early exits (0-based) that join the loss at iteration ``step`` (0-based) of stage 1.

    - ``roundrobin`` (default; the text of sec. 4.3): one early exit per iteration, in turn:
      exit ``step mod n_early``. The final exit is always in.
    - ``literal``: eq. 2 as printed, 1(j mod i == 0) with 1-based exit i and 1-based batch j = step + 1:
      exit 1 joins every batch, exit 2 every second batch, and so on. This trains shallow exits far more
      often than deep ones and includes several exits per batch, unlike the text; it is kept as an option.
    - ``all``: every early exit every iteration (the E2E baseline).
    - ``none``: the final exit alone (the vanilla backbone for the Frozen baseline).
    """
    if mode == "roundrobin":
        return [step % n_early] if n_early else []
    if mode == "literal":
        j = step + 1
        return [i - 1 for i in range(1, n_early + 1) if j % i == 0]
    if mode == "all":
        return list(range(n_early))
    if mode == "none":
        return []
    raise ValueError("unknown exit-dropout mode {!r}".format(mode))
