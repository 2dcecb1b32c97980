"""Issue 18's figures: the unmodified E2B SDKs against Hangar's gateway (scripts/e2b-sdk-test --bench).

Prints one markdown row per measurement (samples, p50, p90), each next to the baseline measured in
the same run: a plain HTTP round trip to the gateway (a GET it answers itself, 404, kept-alive httpx).

    python sdk_bench.py [--samples N]
"""

import argparse
import os
import sys
import time

import httpx
from e2b import Sandbox
from e2b_code_interpreter import Sandbox as CodeSandbox


def timed(fn, samples, warmup=2, pause=0.0):
    """fn's times in ms; with `pause`, that many seconds (not timed) before each sample."""
    for _ in range(warmup):
        fn()
    values = []
    for _ in range(samples):
        time.sleep(pause)
        start = time.perf_counter()
        fn()
        values.append((time.perf_counter() - start) * 1000)
    values.sort()
    return values


def quantile(values, q):
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    n = args.samples
    url = os.environ["E2B_SANDBOX_URL"]
    rows = []
    with Sandbox.create(timeout=600) as sbx:
        with httpx.Client() as http:
            # A request the gateway answers itself (the control plane has no /health: 404, no NATS).
            def plain():
                assert http.get(url + "/health").status_code == 404
            rows.append(("baseline: HTTP GET answered by the gateway alone (httpx, kept alive)", timed(plain, n)))
        rows.append(('`sbx.commands.run("true")`', timed(lambda: sbx.commands.run("true"), n)))
        rows.append(('`sbx.files.write` + `read`, 1 KiB', timed(
            lambda: (sbx.files.write("/home/user/b.txt", "x" * 1024), sbx.files.read("/home/user/b.txt")), n)))
    with CodeSandbox.create(timeout=600) as code:
        rows.append(('`sbx.run_code("1+1")` (warm context)', timed(lambda: code.run_code("1+1"), n)))

    def create_run_kill():
        s = CodeSandbox.create(timeout=60)
        assert s.run_code("1+1").text == "2"
        s.kill()

    def create_kill():
        Sandbox.create(timeout=60).kill()

    rows.append(("`Sandbox.create()` + `kill()`", timed(create_kill, max(5, n // 5), warmup=1)))
    rows.append(('`CodeSandbox.create()` + `run_code("1+1")` + `kill()`',
                 timed(create_run_kill, max(5, n // 5), warmup=1)))
    # The node's warm sandbox (hangar dev --sandbox-pool 1) sets the next one up in about 60 ms, so
    # back-to-back creates outrun it: the same, 0.3 s apart, each served warm.
    rows.append(("`Sandbox.create()` + `kill()`, 0.3 s apart (the node's warm sandbox)",
                 timed(create_kill, max(5, n // 5), warmup=1, pause=0.3)))
    rows.append(('`CodeSandbox.create()` + `run_code("1+1")` + `kill()`, 0.3 s apart (warm, its kernel running)',
                 timed(create_run_kill, max(5, n // 5), warmup=1, pause=0.3)))
    base = quantile(rows[0][1], 0.5)
    print("| what | samples | p50 | p90 | p50 − baseline p50 |")
    print("|---|---|---|---|---|")
    for what, values in rows:
        p50 = quantile(values, 0.5)
        print(f"| {what} | {len(values)} | {p50:.2f} ms | {quantile(values, 0.9):.2f} ms | "
              f"{p50 - base:+.2f} ms |")


if __name__ == "__main__":
    main()
    # Without the interpreter's teardown, where the SDK's native HTTP client sometimes aborts.
    sys.stdout.flush()
    os._exit(0)
