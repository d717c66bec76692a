"""Time from exec to the first 200 from GET /health, for benches/compare.sh.

Usage: start-time.py URL PIDFILE LOGFILE -- COMMAND [ARGS...]
Starts COMMAND (environment inherited, output to LOGFILE), polls URL/health every millisecond,
prints the milliseconds until it answered 200, writes the child's pid to PIDFILE and leaves the
child running. Gives up after 60 s.
"""

import http.client
import subprocess
import sys
import time
from urllib.parse import urlparse


def main() -> int:
    url, pidfile, logfile = sys.argv[1:4]
    command = sys.argv[sys.argv.index("--") + 1 :]
    target = urlparse(url)
    with open(logfile, "ab") as log:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=log, stderr=log)
    with open(pidfile, "w") as f:
        f.write(str(child.pid))
    while time.perf_counter() - started < 60:
        if child.poll() is not None:
            print(f"exited with {child.returncode} before answering", file=sys.stderr)
            return 1
        try:
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                print(round((time.perf_counter() - started) * 1000, 1))
                return 0
        except OSError:
            pass
        time.sleep(0.001)
    print("no answer within 60 s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
