"""The counter-based noise specification (vsc_kernels._philox)."""

import math

import pytest
import torch

from vsc_kernels import _philox


def _words(*values):
    return [torch.tensor(v, dtype=torch.int64) for v in values]


@pytest.mark.parametrize("counter,key,expected", [
    # Known-answer vectors of Philox4x32-10 published with Random123.
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expected):
    out = _philox.philox4x32(*_words(*counter), *_words(*key))
    assert tuple(int(x) for x in out) == expected


def test_philox_matches_triton_randint4x():
    triton = pytest.importorskip("triton")
    import triton.language as tl

    from vsc_kernels import _dispatch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not _dispatch.triton_interpreted():
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")

    @triton.jit
    def draw(out, seed, start, N: tl.constexpr):
        idx = tl.arange(0, N)
        a, b, c, d = tl.randint4x(seed, idx.to(tl.int64) + start)
        tl.store(out + idx * 4, a.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out + idx * 4 + 1, b.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out + idx * 4 + 2, c.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out + idx * 4 + 3, d.to(tl.int64) & 0xFFFFFFFF)

    n, seed, start = 64, 0x123456789ABCDEF0, 5_000_000_000
    out = torch.zeros(n * 4, dtype=torch.int64, device=device)
    draw[(1,)](out, seed, start, n)
    q = torch.arange(n, dtype=torch.int64) + start
    zero = torch.zeros_like(q)
    k0, k1 = _philox._split64(torch.tensor(seed))
    ours = _philox.philox4x32(q & 0xFFFFFFFF, q >> 32, zero, zero, k0, k1)
    assert torch.equal(torch.stack(ours, -1).reshape(-1), out.cpu())


def test_lane_layout_and_64bit_counters():
    seed = torch.tensor([7, 0], dtype=torch.int64)
    d = 10  # not a multiple of 4: rows use ceil(d/4) = 3 counters
    lanes = _philox.philox_lanes(seed, 3, d)
    k0, k1 = _philox._split64(seed[0])
    for r in range(3):
        for i in range(d):
            q = torch.tensor(r * 3 + i // 4)
            out = _philox.philox4x32(q, torch.tensor(0), torch.tensor(0), torch.tensor(0), k0, k1)
            assert int(lanes[r, i]) == int(out[i % 4])
    # Counters past 2**32 keep their high word: no wrap-around onto low counters.
    low = _philox.philox4x32(*_words(5, 0, 0, 0), k0, k1)
    high = _philox.philox4x32(*_words(5, 1, 0, 0), k0, k1)
    assert tuple(map(int, low)) != tuple(map(int, high))


def test_offset_word_changes_the_stream():
    a = _philox.philox_lanes(torch.tensor([3, 0]), 4, 8)
    b = _philox.philox_lanes(torch.tensor([3, 1]), 4, 8)
    assert not torch.equal(a, b)


def test_laplace_noise_range_and_symmetry():
    eps = _philox.laplace_noise(torch.tensor([11, 12]), 512, 512)
    assert torch.isfinite(eps).all()
    # The clamp of Appendix B bounds |eps| by -log(1e-6).
    assert eps.abs().max() <= -math.log(_philox.LAPLACE_LOG_CLAMP) + 1e-5
    assert abs(eps.mean().item()) < 0.02
    assert abs(eps.var().item() - 2.0) < 0.05  # Var(Laplace(0, 1)) = 2


def test_gaussian_noise_moments():
    eps = _philox.gaussian_noise(torch.tensor([5, 6]), 512, 513)
    assert eps.shape == (512, 513)
    assert abs(eps.mean().item()) < 0.01
    assert abs(eps.var().item() - 1.0) < 0.02
