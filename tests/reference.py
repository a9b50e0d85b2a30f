"""Naive reference implementations of the op pairs, for tests only.

Each one is written the slow, obvious way (Python loops over pixels, heads, rows) straight
from the definition, sharing no code with tinytok.ops, so that agreeing with it means
something. NumPy in, NumPy out, float64 arithmetic where the loops accumulate.
"""
import cmath
import math

import numpy as np


# --- test data ----------------------------------------------------------------------------

def away_from_zero(x, margin=0.1):
    """x with every |value| >= margin, keeping signs: keeps relu's kink out of reach."""
    return np.where(x >= 0, 1.0, -1.0) * (margin + np.abs(x))


# --- linear and element-wise ops ----------------------------------------------------------

def linear(x, w, b):
    """y[..., o] = sum_i x[..., i] w[i, o] + b[o], one output element at a time."""
    rows = x.reshape(-1, x.shape[-1])
    y = np.zeros((rows.shape[0], w.shape[1]))
    for r in range(rows.shape[0]):
        for o in range(w.shape[1]):
            y[r, o] = sum(rows[r, i] * w[i, o] for i in range(w.shape[0])) + b[o]
    return y.reshape(*x.shape[:-1], w.shape[1])


def relu(x):
    return np.array([max(v, 0.0) for v in x.reshape(-1)]).reshape(x.shape)


def leaky_relu(x, slope=0.2):
    return np.array([v if v > 0 else slope * v for v in x.reshape(-1)]).reshape(x.shape)


def gelu(x):
    """GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    c = math.sqrt(2 / math.pi)
    vals = [0.5 * v * (1 + math.tanh(c * (v + 0.044715 * v ** 3))) for v in x.reshape(-1)]
    return np.array(vals).reshape(x.shape)


def layer_norm(x, gamma, beta, eps=1e-5):
    """Normalize every row of the last axis by its own mean and biased variance."""
    rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
    y = np.empty_like(rows)
    C = rows.shape[1]
    for r, row in enumerate(rows):
        mean = sum(row) / C
        var = sum((v - mean) ** 2 for v in row) / C
        for c in range(C):
            y[r, c] = (row[c] - mean) / math.sqrt(var + eps) * gamma[c] + beta[c]
    return y.reshape(x.shape)


def embedding(ids, table):
    out = np.empty(ids.shape + (table.shape[1],))
    for pos in np.ndindex(ids.shape):
        out[pos] = table[int(ids[pos])]
    return out


def embedding_backward(dout, ids, num_rows):
    dtable = np.zeros((num_rows, dout.shape[-1]))
    for pos in np.ndindex(ids.shape):
        dtable[int(ids[pos])] += dout[pos]
    return dtable


# --- losses -------------------------------------------------------------------------------

def cross_entropy(logits, targets, ignore_index=-1):
    """Mean over kept rows of -log softmax(row)[target], the log-softmax written out."""
    V = logits.shape[-1]
    rows = logits.reshape(-1, V).astype(np.float64)
    total, count = 0.0, 0
    for row, t in zip(rows, targets.reshape(-1)):
        if t == ignore_index:
            continue
        m = max(row)
        log_sum_exp = m + math.log(sum(math.exp(v - m) for v in row))
        total += log_sum_exp - row[t]
        count += 1
    return total / max(count, 1)


def mse(pred, target):
    diffs = (pred.astype(np.float64) - target).reshape(-1)
    return sum(d * d for d in diffs) / diffs.size


def dft2(x):
    """The orthonormal 2-D DFT over the last two axes, from its definition:
    F[k, l] = sum over m, n of x[m, n] exp(-2 pi i (k m / H + l n / W)) / sqrt(H W)."""
    H, W = x.shape[-2:]
    out = np.zeros(x.shape, dtype=complex)
    for k in range(H):
        for l in range(W):
            wave = [[cmath.exp(-2j * math.pi * (k * m / H + l * n / W)) for n in range(W)]
                    for m in range(H)]
            out[..., k, l] = (x * np.array(wave)).sum(axis=(-2, -1)) / math.sqrt(H * W)
    return out


def amplitude_loss(pred, target, bands=None):
    """Each picture's channel (the leading axes flattened), each band: the square root of
    the band's power, summed coefficient by coefficient, the pictures' compared."""
    H, W = pred.shape[-2:]
    bands = np.arange(H * W).reshape(H, W) if bands is None else bands
    ours = dft2(pred.astype(np.float64)).reshape(-1, H, W)
    theirs = dft2(target.astype(np.float64)).reshape(-1, H, W)
    total = 0.0
    for a, b in zip(ours, theirs):
        for band in np.unique(bands):
            power_a = sum(abs(a[i, j]) ** 2 for i, j in zip(*np.nonzero(bands == band)))
            power_b = sum(abs(b[i, j]) ** 2 for i, j in zip(*np.nonzero(bands == band)))
            total += (math.sqrt(power_a) - math.sqrt(power_b)) ** 2
    return total / pred.size


def hinge_d_loss(real, fake):
    """The two hinges written as branches: a real score below 1 costs 1 - score, a fake
    score above -1 costs 1 + score; each side averaged over its own scores."""
    real_cost = [1.0 - float(s) if s < 1 else 0.0 for s in real.reshape(-1)]
    fake_cost = [1.0 + float(s) if s > -1 else 0.0 for s in fake.reshape(-1)]
    return sum(real_cost) / len(real_cost) + sum(fake_cost) / len(fake_cost)


def hinge_d_loss_backward(dloss, real, fake):
    """Each score's slope on its own branch; a score exactly on its margin is on the flat
    branch (PyTorch's choice for relu at 0)."""
    dreal = [-dloss / real.size if s < 1 else 0.0 for s in real.reshape(-1)]
    dfake = [dloss / fake.size if s > -1 else 0.0 for s in fake.reshape(-1)]
    return np.array(dreal).reshape(real.shape), np.array(dfake).reshape(fake.shape)


def hinge_g_loss(fake):
    scores = [float(s) for s in fake.reshape(-1)]
    return -sum(scores) / len(scores)


# --- convolutions -------------------------------------------------------------------------

def pad(x, padding):
    """Zero-pad the last two axes of (N, C, H, W)."""
    N, C, H, W = x.shape
    out = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=np.float64)
    out[:, :, padding:padding + H, padding:padding + W] = x
    return out


def conv2d(x, w, b, stride=1, padding=0):
    """out[n, f, i, j] = b[f] + sum_(c, u, v) x_pad[n, c, i*s + u, j*s + v] w[f, c, u, v]."""
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    xp = pad(x, padding)
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    out = np.zeros((N, F, Ho, Wo))
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    field = xp[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    out[n, f, i, j] = np.sum(field * w[f]) + (0.0 if b is None else b[f])
    return out


def conv2d_backward(dout, x, w, stride=1, padding=0):
    """dx, dw, db of conv2d, by sending every output pixel's gradient back to its field."""
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    xp = pad(x, padding)
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    _, _, Ho, Wo = dout.shape
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    g = dout[n, f, i, j]
                    rows = slice(i * stride, i * stride + kh)
                    cols = slice(j * stride, j * stride + kw)
                    dxp[n, :, rows, cols] += g * w[f]
                    dw[f] += g * xp[n, :, rows, cols]
    dx = dxp[:, :, padding:padding + H, padding:padding + W]
    db = dout.sum(axis=(0, 2, 3))
    return dx, dw, db


def conv2d_scipy(x, w, b, stride=1, padding=0):
    """conv2d as a sum of scipy.signal.correlate over input channels: a second opinion."""
    from scipy.signal import correlate
    xp = pad(x, padding)
    N, F = x.shape[0], w.shape[0]
    out = []
    for n in range(N):
        maps = []
        for f in range(F):
            full = sum(correlate(xp[n, c], w[f, c], mode="valid") for c in range(x.shape[1]))
            maps.append(full[::stride, ::stride] + (0.0 if b is None else b[f]))
        out.append(maps)
    return np.array(out)


def conv_transpose2d(x, w, b, stride=1, padding=0):
    """Every input pixel paints w[c] (F, kh, kw), scaled by its value, at (i*s, j*s) of a
    canvas; the canvas is then cropped by `padding` on every side."""
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    canvas = np.zeros((N, F, (H - 1) * stride + kh, (W - 1) * stride + kw))
    for n in range(N):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    canvas[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += (
                        x[n, c, i, j] * w[c])
    out = canvas[:, :, padding:canvas.shape[2] - padding, padding:canvas.shape[3] - padding]
    if b is not None:
        out = out + np.asarray(b)[None, :, None, None]
    return out


def conv_transpose2d_backward(dout, x, w, stride=1, padding=0):
    """dx, dw, db of conv_transpose2d: each input pixel reads back the patch it painted."""
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    canvas = np.zeros((N, F, (H - 1) * stride + kh, (W - 1) * stride + kw))
    canvas[:, :, padding:canvas.shape[2] - padding, padding:canvas.shape[3] - padding] = dout
    dx = np.zeros(x.shape)
    dw = np.zeros(w.shape)
    for n in range(N):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    patch = canvas[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    dx[n, c, i, j] = np.sum(patch * w[c])
                    dw[c] += x[n, c, i, j] * patch
    db = dout.sum(axis=(0, 2, 3))
    return dx, dw, db


# --- attention ----------------------------------------------------------------------------

def causal_self_attention(x, w_qkv, b_qkv, w_proj, b_proj, n_head):
    """One sequence, one head, one query position at a time; position t sees only s <= t."""
    B, T, C = x.shape
    hs = C // n_head
    qkv = x.astype(np.float64) @ w_qkv + b_qkv          # (B, T, 3C)
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    y = np.zeros((B, T, C))
    for bi in range(B):
        for h in range(n_head):
            cols = slice(h * hs, (h + 1) * hs)
            for t in range(T):
                visible = range(t + 1)                  # the causal mask, spelled out
                scores = [float(q[bi, t, cols] @ k[bi, s, cols]) / math.sqrt(hs)
                          for s in visible]
                m = max(scores)
                weights = [math.exp(sc - m) for sc in scores]
                total = sum(weights)
                y[bi, t, cols] = sum(wt / total * v[bi, s, cols]
                                     for wt, s in zip(weights, visible))
    return y @ w_proj + b_proj


def masked_self_attention(x, w_qkv, b_qkv, w_proj, b_proj, n_head, allowed):
    """The same loops, each query over the keys its row of allowed (T, T) lets it see:
    allowed[t][s] True where position t may attend to position s."""
    B, T, C = x.shape
    hs = C // n_head
    qkv = x.astype(np.float64) @ w_qkv + b_qkv          # (B, T, 3C)
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    y = np.zeros((B, T, C))
    for bi in range(B):
        for h in range(n_head):
            cols = slice(h * hs, (h + 1) * hs)
            for t in range(T):
                visible = [s for s in range(T) if allowed[t][s]]
                scores = [float(q[bi, t, cols] @ k[bi, s, cols]) / math.sqrt(hs)
                          for s in visible]
                m = max(scores)
                weights = [math.exp(sc - m) for sc in scores]
                total = sum(weights)
                y[bi, t, cols] = sum(wt / total * v[bi, s, cols]
                                     for wt, s in zip(weights, visible))
    return y @ w_proj + b_proj


# --- picture fidelity ---------------------------------------------------------------------

def ssim(a, b, data_range=255.0, size=11, sigma=1.5):
    """Wang et al. 2004, one window position and channel at a time: the 2-D Gaussian window
    written out as exp(-(dy^2 + dx^2) / (2 sigma^2)) over size x size offsets, normalised,
    applied to every position where it fits inside the picture; mean per picture (N,)."""
    N, H, W, C = a.shape
    r = (size - 1) // 2
    window = np.array([[math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
                        for dx in range(-r, r + 1)] for dy in range(-r, r + 1)])
    window /= window.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = np.zeros(N)
    for n in range(N):
        values = []
        for c in range(C):
            for i in range(r, H - r):
                for j in range(r, W - r):
                    pa = a[n, i - r:i + r + 1, j - r:j + r + 1, c].astype(np.float64)
                    pb = b[n, i - r:i + r + 1, j - r:j + r + 1, c].astype(np.float64)
                    ma, mb = np.sum(window * pa), np.sum(window * pb)
                    va = np.sum(window * (pa - ma) ** 2)
                    vb = np.sum(window * (pb - mb) ** 2)
                    cov = np.sum(window * (pa - ma) * (pb - mb))
                    values.append((2 * ma * mb + c1) * (2 * cov + c2)
                                  / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
        out[n] = np.mean(values)
    return out


def hf_share(originals, reconstructions, low):
    """Power at radial frequencies >= low cycles per pixel, reconstructions over originals:
    each DFT coefficient F[u, v] = sum_y sum_x x[y, x] exp(-2 pi i (u y / H + v x / W))
    summed from its definition; coefficient k of n is the frequency k / n cycles per pixel,
    the same as -(n - k) / n (the DFT is periodic), so its size is min(k, n - k) / n."""
    N, H, W, C = originals.shape

    def fold(k, n):
        return min(k, n - k) / n

    ys, xs = np.arange(H)[:, None], np.arange(W)[None, :]
    power = [0.0, 0.0]
    for u in range(H):
        for v in range(W):
            if math.hypot(fold(u, H), fold(v, W)) < low:
                continue
            basis = np.exp(-2j * math.pi * (u * ys / H + v * xs / W))
            for k, pictures in enumerate((originals, reconstructions)):
                for n in range(N):
                    for c in range(C):
                        coefficient = np.sum(pictures[n, :, :, c] * basis)
                        power[k] += abs(coefficient) ** 2
    return power[1] / power[0]


# --- resizing -----------------------------------------------------------------------------

def area_resize(x, size):
    """out[n, c, i, j] = the mean of x[n, c, h, w] over the cells that output cell (i, j)
    covers: h from floor(i H / H_out) to ceil((i + 1) H / H_out) - 1, w likewise (adaptive
    average pooling), one output pixel at a time."""
    N, C, H, W = x.shape
    Ho, Wo = size
    out = np.zeros((N, C, Ho, Wo))
    for i in range(Ho):
        h0, h1 = math.floor(i * H / Ho), math.ceil((i + 1) * H / Ho)
        for j in range(Wo):
            w0, w1 = math.floor(j * W / Wo), math.ceil((j + 1) * W / Wo)
            for n in range(N):
                for c in range(C):
                    cells = [float(x[n, c, h, w]) for h in range(h0, h1) for w in range(w0, w1)]
                    out[n, c, i, j] = sum(cells) / len(cells)
    return out


def bilinear_resize(x, size):
    """out[n, c, i, j] = x at the point (sy, sx) that output (i, j)'s centre falls on, read
    between the four input centres around it: sy = (i + 1/2) H / H_out - 1/2 (0 if below),
    the rows floor(sy) and floor(sy) + 1 (the last row if beyond) weighted by the distance
    to the other one, and the same along x (align_corners=False)."""
    N, C, H, W = x.shape
    Ho, Wo = size

    def neighbours(i, n_in, n_out):
        s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = math.floor(s)
        return [(lo, 1 - (s - lo)), (min(lo + 1, n_in - 1), s - lo)]

    out = np.zeros((N, C, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            corners = [(h, w, wh * ww) for h, wh in neighbours(i, H, Ho)
                       for w, ww in neighbours(j, W, Wo)]
            for n in range(N):
                for c in range(C):
                    out[n, c, i, j] = sum(weight * float(x[n, c, h, w])
                                          for h, w, weight in corners)
    return out
