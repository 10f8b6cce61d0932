"""Launches a test worker script as 2 JAX processes x 4 CPU devices on 127.0.0.1."""
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two(worker: str, out, *args, heartbeat: int = 10, timeout: int = 240):
  """Runs `worker out *args` as 2 processes x 4 devices; returns [(rc, log)]."""
  port = free_port()
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i), ALIGNAX_HEARTBEAT_SECONDS=str(heartbeat))
    procs.append(subprocess.Popen([sys.executable, worker, str(out), *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True))
  results = []
  for p in procs:
    try:
      log, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise AssertionError("a worker did not exit within the timeout") from None
    results.append((p.returncode, log))
  return results
