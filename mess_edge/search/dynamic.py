"""The input-dependent family: image-level exit policy over selected exits, scored with matrix products.

Why the mIoU is a matrix product: let G_j[a, i] = 1 when image i leaves at the j-th selected exit under option
a (head, th_img), i.e. its eq. 7 confidence there is >= th_img. The stats an image contributes, W_j (from exit
j on), satisfy W_j = G_j ? S_head(a_j) : W_{j+1}, with W_{k+1} = S_final. Summed over the images, the total
for (a_1, r), r = (a_2..a_k), is E_1[a_1] + (1 - G_1)[a_1, :] @ W_2[:, r], where E_1[a_1] = G_1[a_1, :] @
S_head(a_1): one BLAS call per block of configurations. Counts of images still running give the costs the
same way, without the stats.
"""

import itertools

import numpy as np

from mess_edge.search.memo import miou_from_stats
from mess_edge.search.space import Config, axis_view

_BLOCK_BYTES = 64 << 20  # bound on each temporary of a block


class InputDependent:
    """Exits at ``points`` (options head x th_img) then the final, pixel threshold index q (module doc)."""

    def __init__(self, ctx, points, q):
        self.ctx, self.points, self.q, self.k = ctx, points, q, len(points)
        self.gates = [ctx.gates(p, q) for p in points]  # per axis: (heads [A], th index [A], G bool [A, I])
        self.shape = tuple(len(g[0]) for g in self.gates)
        self.size = int(np.prod(self.shape))
        self.shape2 = (self.shape[0], self.size // self.shape[0])

    def _stay(self, j):
        return (~self.gates[j][2]).astype(self.ctx.dtype)  # [A_j, I] 1 where the image goes on

    def remaining(self):
        """[p_1..p_k]: fraction of images still running after selected exit j, shape [A_1..A_j]."""
        c, stay1 = self.ctx, self._stay(0)
        rem = [stay1.sum(axis=1).astype(np.float64) / c.n_images]
        prod = None  # [A_2 * .. * A_j, I]: 1 where the image goes on past exits 2..j
        for j in range(1, self.k):
            stay = self._stay(j)
            prod = stay if prod is None else (prod[:, None, :] * stay[None, :, :]).reshape(-1, c.n_images)
            counts = (stay1 @ prod.T).astype(np.float64)  # exact: integers below 2**24
            rem.append(counts.reshape(self.shape[:j + 1]) / c.n_images)
        return rem

    def costs(self):
        """float64 [size]: Table 1's input-dependent cost + upsample, per configuration of the grid."""
        c, k = self.ctx, self.k
        rem = [r.reshape(r.shape + (1,) * (k - r.ndim)) for r in self.remaining()]
        # Same operations, in the same order, as costs.cost_input_dependent + costs.cost_upsample.
        total, p_prev, prev = 0.0, 1.0, -1
        for j, n in enumerate(self.points):
            term = c.span[prev + 1, n + 1] + c.head_cost[self.gates[j][0]]
            total = total + p_prev * axis_view(term, j, k)
            p_prev, prev = rem[j], n
        total = total + p_prev * c.span[prev + 1, -1]
        ups, p_prev = 0.0, 1.0
        for j in range(k):
            ups = ups + (p_prev - rem[j]) * axis_view(c.ups[self.gates[j][0]], j, k)
            p_prev = rem[j]
        ups = ups + p_prev * c.ups[-1]
        return np.broadcast_to(total + ups, self.shape).ravel()

    def _continuation(self, cols):
        """W_2 for columns r (flat over axes 2..k): [I, len(cols), 3C] stats of the exit each image takes."""
        c = self.ctx
        w = c.stats_t[:, c.final, :][:, None, :]
        if self.k == 1:
            return w
        ix = np.unravel_index(cols, self.shape[1:])
        for j in range(self.k - 1, 0, -1):
            heads, _, g = self.gates[j]
            a = ix[j - 1]
            w = np.where(g[a].T[:, :, None], c.stats_t[:, heads[a], :], w)
        return w

    def score(self, rows, cols):
        """float64 [len(rows), len(cols)]: mIoU (fraction) of the block of shape2 [A_1, A_2 * .. * A_k]."""
        c = self.ctx
        stay1 = self._stay(0)[rows]
        leave = c.leave_sums(self.points[0], self.q)[rows][:, None, :]
        width = c.stats.shape[2] * c.stats.itemsize
        step = max(1, min(len(cols), _BLOCK_BYTES // (width * c.n_images), _BLOCK_BYTES // (width * max(1, len(rows)))))
        out = np.empty((len(rows), len(cols)))
        for c0 in range(0, len(cols), step):
            chunk = cols[c0:c0 + step]
            w = self._continuation(chunk)
            block = (stay1 @ w.reshape(c.n_images, -1)).reshape(len(rows), len(chunk), -1)
            block += leave
            out[:, c0:c0 + len(chunk)] = miou_from_stats(block)
        return out

    def config(self, j):
        ix = np.unravel_index(int(j), self.shape)
        heads = tuple(int(g[0][i]) for g, i in zip(self.gates, ix))
        th_img = tuple(float(self.ctx.th_img[g[1][i]]) for g, i in zip(self.gates, ix))
        return Config(heads, th_img, self.ctx.th_pix[self.q], True)

    def descriptions(self):
        memo, th = self.ctx.memo, self.ctx.th_img
        labels = [["{}@{:.2f}".format(memo.head_label(h), th[t]) for h, t in zip(g[0], g[1])] for g in self.gates]
        pix = self.ctx.th_pix[self.q]
        tail = "" if pix is None else " pix{:.2f}".format(pix)
        return ["+".join(p) + tail for p in itertools.product(*labels)]
