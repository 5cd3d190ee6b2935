"""Benchmark 7: the same batch on worker processes over Redis (issue 14), against RQ on the same
Redis, the queue a Python user would pick for the job.

Both tools get the same work and the same shape of pool: N worker processes that each run one
job at a time, fed by one producer, on one redis-server started here on a free loopback port.

- dispatch_runner: `dispatch_runner worker --redis URL --max-workers 1` N times, then
  `dispatch_runner run --redis URL` (the coordinator, `max_workers` N) on a batch of `command`
  tasks; the figure is the coordinator's wall time, validation to result document.
- RQ: N `rq worker` processes (RQ's default worker: a forked work horse per job), then the
  producer enqueues the jobs and waits until RQ's finished-job registry holds all of them; each
  job runs the same program as a subprocess.

Per-task overhead is measured on `true`, where nothing but the machinery costs time; speed-up on
`sleep 0.2`, where the ideal is linear in the number of workers. The local executor's figure on
the same `true` batch is the baseline the Redis executor's overhead is read against.

Standard library only apart from the peer, which runs under the bench venv's python.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RQ_JOBS = '''
import subprocess


def run(argv):
    subprocess.run(argv, check=True)
'''

# The producer side of RQ: enqueue every job, then wait until all are finished (polling RQ's own
# registries, as a user's script would), and print the wall time.
RQ_PRODUCER = '''
import sys, time
from redis import Redis
from rq import Queue
from rq.registry import FinishedJobRegistry, FailedJobRegistry

url, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
conn = Redis.from_url(url)
q = Queue("bench", connection=conn)
finished = FinishedJobRegistry(queue=q)
failed = FailedJobRegistry(queue=q)
start = time.perf_counter()
for _ in range(n):
    q.enqueue("rq_bench_jobs.run", argv, result_ttl=600)
while finished.count + failed.count < n:
    time.sleep(0.005)
elapsed = time.perf_counter() - start
if failed.count:
    sys.exit(f"{failed.count} RQ jobs failed")
print(elapsed)
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen within 30 s")


class Redis:
    """A throwaway redis-server on a free loopback port, nothing persisted."""

    def __init__(self, work):
        self.dir = Path(tempfile.mkdtemp(prefix="redis-", dir=work))
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc, "redis-server")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def flush(self):
        subprocess.run(["redis-cli", "-p", str(self.port), "flushall"], stdout=subprocess.DEVNULL, check=True)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_all(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def command_batch(n, argv, workers, trace_dir):
    tasks = [{"task_id": f"t{i}", "agent": "command", "input_data": {"argv": argv}} for i in range(n)]
    return json.dumps({"tasks": tasks, "config": {"max_workers": workers, "trace_dir": str(trace_dir)}})


def ours(binary, redis, work, n, argv, workers):
    """Coordinator wall time with `workers` worker processes of capacity 1 (None: local executor,
    `workers` slots in the coordinator itself)."""
    trace = work / "traces7"
    path = work / "scale-out.json"
    path.write_text(command_batch(n, argv, workers, trace))
    procs = []
    if redis is not None:
        redis.flush()
        for i in range(workers):
            procs.append(
                subprocess.Popen(
                    [binary, "worker", "--redis", redis.url, "--max-workers", "1", "--name", f"bench-{i}"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        wait_workers(binary, redis, workers, procs)
    try:
        argv_run = [binary, "run", "-q", "-f", str(path)] + (["--redis", redis.url] if redis is not None else [])
        start = time.perf_counter()
        p = subprocess.run(argv_run, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        if p.returncode != 0:
            raise RuntimeError(f"dispatch_runner run failed ({p.returncode}): {p.stderr.decode()[-2000:]}")
        result = json.loads(p.stdout)
        ok = result["summary"]["successful"]
        if ok != n:
            raise RuntimeError(f"dispatch_runner: {ok} of {n} tasks succeeded")
        return elapsed
    finally:
        stop_all(procs)
        shutil.rmtree(trace, ignore_errors=True)


def wait_workers(binary, redis, count, procs):
    """Until `dispatch_runner workers` lists all of them: the pool is warm before the clock starts,
    as RQ's workers are."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a dispatch_runner worker exited early ({p.returncode})")
        out = subprocess.run([binary, "workers", "--redis", redis.url], capture_output=True, text=True)
        if out.returncode == 0:
            try:
                listed = json.loads(out.stdout)
                listed = listed.get("workers", listed) if isinstance(listed, dict) else listed
                if len(listed) >= count:
                    return
            except (ValueError, AttributeError):
                pass
        time.sleep(0.1)
    raise RuntimeError(f"{count} dispatch_runner workers did not register within 30 s")


def rq(python, redis, work, n, argv, workers):
    """RQ's wall time from the first enqueue until every job is finished."""
    jobs = work / "rq_bench_jobs.py"
    jobs.write_text(RQ_JOBS)
    producer = work / "rq_bench_producer.py"
    producer.write_text(RQ_PRODUCER)
    redis.flush()
    env = {**os.environ, "PYTHONPATH": str(work)}
    rq_bin = str(Path(python).parent / "rq")
    procs = [
        subprocess.Popen(
            [rq_bin, "worker", "--url", redis.url, "--name", f"rq-bench-{i}", "--quiet", "bench"],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    try:
        wait_rq_workers(python, redis, workers, procs, env)
        p = subprocess.run([python, str(producer), redis.url, str(n)] + argv, cwd=work, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"RQ producer failed ({p.returncode}): {p.stderr[-2000:]}")
        return float(p.stdout.strip())
    finally:
        stop_all(procs)


def wait_rq_workers(python, redis, count, procs, env):
    code = "import sys; from redis import Redis; from rq import Worker; print(len(Worker.all(connection=Redis.from_url(sys.argv[1]))))"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"an rq worker exited early ({p.returncode})")
        out = subprocess.run([python, "-c", code, redis.url], capture_output=True, text=True, env=env)
        if out.returncode == 0 and int(out.stdout.strip() or 0) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{count} rq workers did not register within 60 s")


def rq_python(args):
    """The bench venv's python when it has RQ, else None (the peer is then not measured)."""
    candidate = args.python
    if not candidate:
        return None
    ok = subprocess.run([candidate, "-c", "import rq, redis"], capture_output=True).returncode == 0
    # Absolute (not resolved: a venv's python is a link) because RQ runs in the work folder.
    return os.path.abspath(candidate) if ok and shutil.which("redis-server") else None


def bench_scale_out(args, table, work):
    if not shutil.which("redis-server"):
        table.add(7, "scale-out over Redis", None, "RQ", None, "s", "-", None)
        return
    python = rq_python(args)
    redis = Redis(work)
    try:
        n = args.scale(2000, 40)
        what = f"{n:,} `true` tasks, 4 worker processes: wall time per task"
        local = ours(args.binary, None, work, n, ["true"], 4) / n
        remote = ours(args.binary, redis, work, n, ["true"], 4) / n
        peer = rq(python, redis, work, n, ["true"], 4) / n if python else None
        table.add(7, f"{n:,} `true` tasks, 4 slots: per task, local executor", local, "-", "-", "us", "(baseline)", None)
        table.add(7, what, remote, "RQ, 4 `rq worker`s", peer, "us", "faster than RQ", remote < peer if peer else None)
        print(f"benchmark 7: true x{n}: local {local * 1e6:.0f} us/task, redis {remote * 1e6:.0f} us/task" + (f", rq {peer * 1e6:.0f} us/task" if peer else ""), file=sys.stderr, flush=True)

        m = args.scale(400, 16)
        secs = "0.2"
        one = None
        for workers in (1, 2, 4):
            t_ours = ours(args.binary, redis, work, m, ["sleep", secs], workers)
            t_rq = rq(python, redis, work, m, ["sleep", secs], workers) if python else None
            one = one or (t_ours, t_rq)
            ideal = m * float(secs) / workers
            speedup = f" (speed-up {one[0] / t_ours:.2f}x; RQ {one[1] / t_rq:.2f}x)" if workers > 1 and t_rq else (f" (speed-up {one[0] / t_ours:.2f}x)" if workers > 1 else "")
            table.add(7, f"{m} `sleep {secs}` tasks, {workers} worker process{'es' if workers > 1 else ''}: wall time{speedup}", t_ours, f"RQ, {workers} `rq worker`{'s' if workers > 1 else ''}", t_rq, "s", f"near the ideal {ideal:.1f} s; faster than RQ", t_ours < t_rq if t_rq else None)
            print(f"benchmark 7: sleep x{m}, {workers} workers: ours {t_ours:.2f} s" + (f", rq {t_rq:.2f} s" if t_rq else ""), file=sys.stderr, flush=True)
    finally:
        redis.stop()
