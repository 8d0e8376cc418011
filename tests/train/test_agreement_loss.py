"""The stage-2 agreement losses held to a plain per-image, per-pixel loop on fresh random logits."""

import math

import pytest

torch = pytest.importorskip("torch")

from mess_edge.train import losses  # noqa: E402


def _plain(logits, teacher, labels, alpha, power):
    per, agree = [], []
    for b in range(logits.shape[0]):
        terms, hits, n = 0.0, 0, 0
        for i in range(logits.shape[2]):
            for j in range(logits.shape[3]):
                if int(labels[b, i, j]) == losses.IGNORE:
                    continue
                s, t = logits[b, :, i, j].double(), teacher[b, :, i, j].double()
                y = int(t.argmax())
                ls, lt = torch.log_softmax(s, 0), torch.log_softmax(t, 0)
                terms += alpha * -float(ls[y]) + (1 - alpha) * float((lt.exp() * (lt - ls)).sum())
                hits += int(int(s.argmax()) == y)
                n += 1
        per.append(terms / max(n, 1))
        agree.append(hits / max(n, 1))
    if power <= 0:
        return sum(per) / len(per)
    w = [max(a, 1e-3) ** power for a in agree]
    mean_w = sum(w) / len(w)
    return sum(wi / mean_w * p for wi, p in zip(w, per)) / len(per)


@pytest.mark.parametrize("kind,power", [("agree", 0.0), ("agree-easy", losses.EASY_POWER)])
def test_agreement_losses_match_a_plain_loop(kind, power):
    gen = torch.Generator().manual_seed(5)
    teacher = torch.randn(3, 4, 5, 6, generator=gen) * 2
    # the exit agrees with the teacher more on image 0 than on image 2: the weighting must tell them apart
    noise = torch.randn(3, 4, 5, 6, generator=gen)
    logits = teacher + noise * torch.tensor([0.3, 1.5, 4.0]).view(3, 1, 1, 1)
    labels = torch.randint(0, 4, (3, 5, 6), generator=gen)
    labels[1, :2] = losses.IGNORE
    got = float(losses.exit_loss(kind, logits, teacher, labels, alpha=0.5))
    assert math.isclose(got, _plain(logits, teacher, labels, 0.5, power), rel_tol=1e-5)


def test_easy_weighting_favours_images_the_exit_already_matches():
    gen = torch.Generator().manual_seed(2)
    teacher = torch.randn(2, 3, 8, 8, generator=gen) * 3
    logits = torch.stack([teacher[0] + 0.1, -teacher[1]])  # image 0 agrees everywhere, image 1 nowhere
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    plain = losses.agreement_loss(logits, teacher, labels)
    easy = losses.agreement_loss(logits, teacher, labels, easy_power=losses.EASY_POWER)
    assert float(easy) < float(plain)  # image 1's large loss is weighted down to ~0
    all_ignored = torch.full((2, 8, 8), losses.IGNORE, dtype=torch.long)
    assert float(losses.agreement_loss(logits, teacher, all_ignored, easy_power=8.0)) == 0.0
