"""The workers' side of the one-line JSON protocol of peer_side_by_side.py (no dependencies:
both virtual environments import it from this folder)."""
import json
import sys
import time


def serve(step, facts: dict) -> None:
  """Prints `facts`; then for each stdin line "run N", times N calls of `step()` and prints
  {"times": [seconds, ...]}."""
  print(json.dumps(facts), flush=True)
  for line in sys.stdin:
    times = []
    for _ in range(int(line.split()[1])):
      start = time.perf_counter()
      step()
      times.append(time.perf_counter() - start)
    print(json.dumps({"times": times}), flush=True)
