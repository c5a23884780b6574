"""Count the operations XLA runs per iteration of each solver's loop (deterministic).

Usage: python benchmarks/solver_loop_ops.py [side]

Compiles CG and MINRES (matfree), `jax.scipy.sparse.linalg.cg` and lineax CG
on the 2-D Poisson problem (`side`^2 unknowns, default 100), and prints for
the `while` loop of each optimized HLO module the number of kernels its body
launches per iteration: fusions, copies and other non-trivial instructions
(parameters, tuples, constants, bitcasts and get-tuple-elements are free).
At n = 10^4 a Poisson CG step costs tens of microseconds, so each extra
kernel (a few small scalar ops, or a copy of the loop state) is a measurable
part of it; counting them is immune to the noise of a shared machine.
"""

from __future__ import annotations

import collections
import re
import sys

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import jax.scipy.sparse.linalg as jsl  # noqa: E402

import matfree  # noqa: E402
from matfree import operators  # noqa: E402

FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast"}


def computations(text):
    """Map computation name -> list of its instruction lines."""
    comps, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if m:
            cur = comps.setdefault(m.group(1), [])
        elif line.startswith("}"):
            cur = None
        elif cur is not None and line.strip():
            cur.append(line.strip())
    return comps


def opcode(ins):
    """The opcode of an HLO instruction line (its shape may be a tuple)."""
    if " = " not in ins:
        return "?"
    rest = ins.split(" = ", 1)[1]
    if rest.startswith("("):
        depth, end = 0, 0
        while True:
            depth += (rest[end] == "(") - (rest[end] == ")")
            end += 1
            if depth == 0:
                break
        rest = rest[end:].lstrip()
    else:
        rest = rest.split(" ", 1)[1]
    m = re.match(r"([\w\-]+)\(", rest)
    return m.group(1) if m else "?"


def loop_ops(fn, *args):
    """Per while loop: (kernels per body run, Counter of their opcodes, cond kernels)."""
    comps = computations(jax.jit(fn).lower(*args).compile().as_text())
    out = []
    for body in comps.values():
        for ins in body:
            if opcode(ins) == "while":
                b = re.search(r"body=%([\w.\-]+)", ins).group(1)
                cnd = re.search(r"condition=%([\w.\-]+)", ins).group(1)
                ops = collections.Counter(
                    opcode(i) for i in comps[b] if opcode(i) not in FREE
                )
                ncond = sum(opcode(i) not in FREE for i in comps[cnd])
                out.append((sum(ops.values()), dict(sorted(ops.items())), ncond))
    return out


def main():
    side = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    mv = operators.laplace_2d((side, side))
    b = jnp.ones(side * side)
    rtol, maxiter = 1e-6, 20 * side

    def ours(method):
        return lambda b: (
            matfree.solve(
                mv, b, method=method, rtol=rtol, maxiter=maxiter, throw=False
            ).value
        )

    fns = {
        "matfree cg": ours("cg"),
        "matfree minres": ours("minres"),
        "jax.scipy cg": lambda b: jsl.cg(mv, b, tol=rtol, atol=0.0, maxiter=maxiter)[0],
    }
    try:
        import lineax as lx

        def lineax_cg(b):
            like = jax.ShapeDtypeStruct(b.shape, b.dtype)
            tags = (lx.symmetric_tag, lx.positive_semidefinite_tag)
            op = lx.FunctionLinearOperator(mv, like, tags=tags)
            solver = lx.CG(
                rtol=rtol, atol=0.0, norm=lx.internal.two_norm, max_steps=maxiter
            )
            return lx.linear_solve(op, b, solver, throw=False).value

        fns["lineax CG"] = lineax_cg
    except ImportError:
        print("(lineax not installed: skipped)")
    print(f"2-D Poisson, n = {side * side}: kernels per loop iteration (body + cond)")
    for name, fn in fns.items():
        for nbody, ops, ncond in loop_ops(fn, b):
            print(f"  {name:16s} body {nbody:3d} + cond {ncond}: {ops}")


if __name__ == "__main__":
    main()
