"""Tables for benches/load/run.sh from its per-run lines.

    python3 summary.py throughput FILE   # the shared-core rounds
    python3 summary.py pinned FILE       # each server on a core of its own
    python3 summary.py instructions FILE # callgrind counts per request
    python3 summary.py bound FILE        # bare hyper + N ns of work per request

Each line of FILE: name connections req/s p50_us p99_us cpu_us_per_request
(instructions: name connections requests instructions).
Medians are over the rounds; the ratios are also printed round by round,
because the targets of one round run seconds apart while the machine's
speed drifts between rounds.
"""

import collections
import statistics as st
import sys


def read(path):
    rows = collections.defaultdict(list)
    for line in open(path):
        name, conns, rps, p50, p99, cpu = line.split()
        rows[(int(conns), name)].append((float(rps), float(p50), float(p99), float(cpu)))
    return rows


def medians(rows, conns):
    return {n: tuple(st.median(x[i] for x in v) for i in range(4))
            for (c, n), v in rows.items() if c == conns}


def per_round(rows, conns, name, ref):
    """name's req/s over ref's, then ref's CPU per request over name's
    (how many times less CPU name spends on the same answer)."""
    ours, theirs = rows.get((conns, name), []), rows.get((conns, ref), [])
    if not ours or len(ours) != len(theirs):
        return
    for label, field, invert in (("req/s", 0, False), ("CPU per request", 3, True)):
        pairs = [(o[field], t[field]) for o, t in zip(ours, theirs)]
        if not all(o and t for o, t in pairs):
            continue
        ratios = [t / o if invert else o / t for o, t in pairs]
        what = f"{ref} / {name}" if invert else f"{name} / {ref}"
        print(f"{label}, {what}, round by round at {conns} connections: "
              f"{' '.join(f'{r:.2f}' for r in ratios)} (median {st.median(ratios):.2f})")


def ratio(value, base):
    return f"{value / base:.2f}" if base else "-"


def verdict(med, conns):
    """The issue's hit targets on the medians, and what 1.4 × nginx asks of
    the gateway against bare hyper, which does none of its work."""
    gw, ceil, ngx = (med.get(n) for n in ("gateway", "ceiling", "nginx-auto"))
    if conns == 1 or not (gw and ceil and ngx and ceil[0] and ngx[0]):
        return  # one connection measures the pass-through only
    met = lambda ok: "met" if ok else "missed"
    print(f"\nhit targets at {conns} connections: "
          f"{gw[0] / ceil[0]:.2f} × ceiling (≥ 0.8: {met(gw[0] >= 0.8 * ceil[0])}), "
          f"{gw[0] / ngx[0]:.2f} × nginx-auto (≥ 1.4: {met(gw[0] >= 1.4 * ngx[0])}), "
          f"p99 {gw[2]:,.0f} vs {ngx[2]:,.0f} µs ({met(gw[2] <= ngx[2])}); "
          f"bare hyper is {ceil[0] / ngx[0]:.2f} × nginx-auto, so 1.4 × nginx "
          f"asks for {1.4 * ngx[0] / ceil[0]:.2f} × bare hyper")


def throughput(rows):
    for conns in sorted({c for c, _ in rows}, reverse=True):
        print(f"\n{conns} connections (median of rounds)")
        print("| target | req/s | p50 µs | p99 µs | CPU µs/req | × ceiling | × ceiling-per-thread | × nginx-auto |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        med = medians(rows, conns)
        ceil, ceil_pt, ngx = (med.get(n, (0,))[0] for n in ("ceiling", "ceiling-per-thread", "nginx-auto"))
        for name, (rps, p50, p99, cpu) in med.items():
            print(f"| {name} | {rps:,.0f} | {p50:,.0f} | {p99:,.0f} | {cpu:.2f} | "
                  f"{ratio(rps, ceil)} | {ratio(rps, ceil_pt)} | {ratio(rps, ngx)} |")
        verdict(med, conns)
        if "gateway(miss)" in med and "sim-direct(miss)" in med:
            print(f"\npass-through added to the median at {conns} connections: "
                  f"{med['gateway(miss)'][1] - med['sim-direct(miss)'][1]:.0f} µs")
        for gateway in ("gateway", "gateway-ws"):
            for ref in ("ceiling", "nginx-auto"):
                per_round(rows, conns, gateway, ref)


def pinned(rows):
    for conns in sorted({c for c, _ in rows}):
        print(f"\n{conns} connections, pinned (median of rounds)")
        print("| target | req/s | p50 µs | p99 µs | CPU µs/req |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, (rps, p50, p99, cpu) in medians(rows, conns).items():
            print(f"| {name} | {rps:,.0f} | {p50:,.0f} | {p99:,.0f} | {cpu:.2f} |")
        for ref in ("ceiling", "nginx-1w"):
            per_round(rows, conns, "gateway", ref)


def fit(curve):
    """Least squares of 1/req/s on the work per request over (work, req/s)
    points: a server's time per request is its base cost plus the work, so
    the line is straight, and one noisy point moves it less than it would
    move an interpolation. Returns (intercept, slope, r²)."""
    xs, ys = [w for w, _ in curve], [1 / r for _, r in curve]
    mx, my = st.mean(xs), st.mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    syy = sum((y - my) ** 2 for y in ys)
    slope = sxy / sxx
    return my - slope * mx, slope, (sxy * sxy / (sxx * syy) if syy else 1.0)


def bound(rows):
    for conns in sorted({c for c, _ in rows}):
        med = medians(rows, conns)
        ngx = med.get("nginx-auto", (0,))[0]
        print(f"\n{conns} connections (median of rounds)")
        print("| target | req/s | p99 µs | CPU µs/req | × nginx-auto |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, (rps, _, p99, cpu) in med.items():
            print(f"| {name} | {rps:,.0f} | {p99:,.0f} | {cpu:.2f} | {ratio(rps, ngx)} |")
        curve = sorted((int(name[len("hyper+"):-len("ns")]), rps)
                       for name, (rps, *_rest) in med.items() if name.startswith("hyper+"))
        gw = med.get("gateway")
        if not (gw and ngx and len({w for w, _ in curve}) > 1):
            continue
        base, per_ns, r2 = fit(curve)
        if per_ns <= 0:
            print(f"\nat {conns} connections req/s did not fall with the work: no fit")
            continue
        work = lambda rps: (1 / rps - base) / per_ns
        gw_ns, target_ns = work(gw[0]), work(1.4 * ngx)
        print(f"\nat {conns} connections (1/req/s fitted on the work, r² {r2:.3f}): the gateway "
              f"serves as bare hyper + {gw_ns:,.0f} ns per request; 1.4 × nginx-auto "
              f"({1.4 * ngx:,.0f} req/s) is bare hyper + {target_ns:,.0f} ns"
              + (f", so the gateway's own work would have to fall by {1 - target_ns / gw_ns:.0%}"
                 if gw_ns > 0 and target_ns < gw_ns else ""))


def instructions(path):
    counts = {}
    for line in open(path):
        name, conns, requests, ir = line.split()
        if int(requests) > 0:
            counts[(int(conns), name)] = int(ir) / int(requests)
    print("\n| connections | gateway instructions / hit | bare hyper | gateway − bare hyper | × bare hyper |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for conns in sorted({c for c, _ in counts}):
        gw, ceil = counts.get((conns, "gateway")), counts.get((conns, "ceiling"))
        if gw and ceil:
            print(f"| {conns} | {gw:,.0f} | {ceil:,.0f} | {gw - ceil:,.0f} | {gw / ceil:.2f} |")


if __name__ == "__main__":
    if sys.argv[1] == "instructions":
        instructions(sys.argv[2])
    else:
        {"throughput": throughput, "pinned": pinned, "bound": bound}[sys.argv[1]](read(sys.argv[2]))
