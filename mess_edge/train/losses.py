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


def kl_to_teacher(student_logits, teacher_logits, labels=None):
    """KL(p_teacher || p_student) per pixel, averaged over non-ignored pixels.

    The direction is the usual distillation one: the exit (student) is pulled towards the final exit's
    softmax (teacher), sum_c p_N log(p_N / p_i). The teacher is detached.
    """
    log_p_s = F.log_softmax(student_logits, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach(), dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)  # [B, H, W]
    if labels is None:
        return kl.mean()
    valid = labels != IGNORE
    return kl[valid].sum() / valid.sum().clamp(min=1)


def positive_filter(teacher_logits, labels):
    """Labels with every pixel the final exit gets wrong set to IGNORE: the 1(y_N = y) mask of eq. 3."""
    pred = teacher_logits.detach().argmax(dim=1)
    return torch.where(pred == labels, labels, torch.full_like(labels, IGNORE))


def exit_loss(kind, logits, teacher_logits, labels, alpha=0.5):
    """Stage-2 loss of one exit. ``kind``: pfd (ours, eq. 3), ce, kd, selfdistill."""
    if kind == "ce":
        return ce(logits, labels)
    if kind == "kd":
        return kl_to_teacher(logits, teacher_logits, labels)
    if kind == "selfdistill":
        return alpha * ce(logits, labels) + (1 - alpha) * kl_to_teacher(logits, teacher_logits, labels)
    if kind == "pfd":
        filtered = positive_filter(teacher_logits, labels)
        return alpha * ce(logits, filtered) + (1 - alpha) * kl_to_teacher(logits, teacher_logits, labels)
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
