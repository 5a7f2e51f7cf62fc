"""Running code in a new interpreter (what an import leaves loaded is only visible there)."""
import json
import os
import subprocess
import sys


def fresh_json(code):
    """Run ``code`` in a new interpreter (warnings off); returns its last stdout line as JSON."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])
