"""Test helper: the nested Genz-Keister tables of ``meanode.limit.quadrature.hermite`` rebuilt
in high precision (needs ``mpmath``), to check the stored 25-digit tables."""

from __future__ import annotations


def construct_nested_hermite_mp(added=(2, 6, 10, 16), dps: int = 80):
    """Rebuild the nested Genz-Keister rules by Kronrod-Patterson extension in ``dps``-digit
    arithmetic (requires ``mpmath``).

    Returns a list, one entry per rule, of ``(positive_nodes, weights)`` as mpmath numbers:
    ``positive_nodes`` sorted increasing, ``weights`` for ``[0] + positive_nodes``.
    Each extension adds ``added[k]`` (even) nodes: the roots of the even polynomial ``q`` of
    that degree with ``E[p q x^j] = 0`` (j < degree), p the current node polynomial; weights
    solve the even moment equations of the standard normal.
    """
    import mpmath as mp

    with mp.workdps(dps):

        def mom(k: int):
            if k % 2:
                return mp.mpf(0)
            return mp.fac2(k - 1) if k > 0 else mp.mpf(1)

        def polymul(a, b):
            r = [mp.mpf(0)] * (len(a) + len(b) - 1)
            for i, x in enumerate(a):
                for j, y in enumerate(b):
                    r[i + j] += x * y
            return r

        def expect(poly):
            return mp.fsum(c * mom(k) for k, c in enumerate(poly))

        pos: list = []
        out = [([], [mp.mpf(1)])]
        for nadd in added:
            if nadd % 2:
                raise ValueError(f"added sizes must be even; got {nadd}")
            p = [mp.mpf(0), mp.mpf(1)]
            for a in pos:
                p = polymul(p, [-a * a, mp.mpf(0), mp.mpf(1)])
            m = nadd // 2
            A = mp.matrix(m, m)
            b = mp.matrix(m, 1)
            for r, k in enumerate(range(1, nadd, 2)):
                pk = [mp.mpf(0)] * k + p
                for j in range(m):
                    A[r, j] = expect(polymul(pk, [mp.mpf(0)] * (2 * j) + [mp.mpf(1)]))
                b[r] = -expect(polymul(pk, [mp.mpf(0)] * (2 * m) + [mp.mpf(1)]))
            c = mp.lu_solve(A, b)
            ts = mp.polyroots([mp.mpf(1)] + [c[j] for j in range(m - 1, -1, -1)], maxsteps=500, extraprec=4 * dps)
            tol = mp.mpf(10) ** (-dps // 2)
            if any(abs(mp.im(t)) > tol or mp.re(t) <= 0 for t in ts):
                raise ArithmeticError(f"extension by {nadd} nodes has non-real nodes")
            pos = sorted(pos + [mp.sqrt(mp.re(t)) for t in ts])
            npos = len(pos)
            M = mp.matrix(npos + 1, npos + 1)
            rhs = mp.matrix(npos + 1, 1)
            for k in range(npos + 1):
                M[k, 0] = mp.mpf(1) if k == 0 else mp.mpf(0)
                for i, x in enumerate(pos):
                    M[k, i + 1] = 2 * x ** (2 * k)
                rhs[k] = mom(2 * k)
            w = mp.lu_solve(M, rhs)
            out.append((list(pos), [w[i] for i in range(npos + 1)]))
        return out
