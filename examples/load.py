#!/usr/bin/env python3
"""Hit some URLs in a loop until SIGTERM/SIGINT, then print how many requests failed."""

import signal
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter

stop = threading.Event()
counts: Counter[str] = Counter()
lock = threading.Lock()


def hammer(url: str) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                outcome = "ok" if response.status == 200 else f"HTTP {response.status}"
        except (OSError, urllib.error.URLError) as error:
            outcome = f"failed: {error}"
        with lock:
            counts[outcome] += 1


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = [threading.Thread(target=hammer, args=(url,)) for url in sys.argv[1:] for _ in range(2)]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join()
    failed = sum(n for outcome, n in counts.items() if outcome != "ok")
    print(f"load loop: {sum(counts.values())} requests during the redeploy, {failed} failed")
    for outcome, n in counts.items():
        if outcome != "ok":
            print(f"  {n} x {outcome}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
