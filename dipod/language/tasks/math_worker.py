"""The child process that grades MATH500 answers with math-verify (run by ``bounded.BoundedWorker``).

A stand-alone script: it imports math-verify and the standard library only, caps its own address space
(``DIPOD_WORKER_MEMORY_BYTES``), prints ``ready``, then answers one JSON line per request line (the
protocol in ``bounded.py``). math-verify's own time limits are off here (they use ``signal.alarm``); the
parent kills this process when a call runs past its limit.
"""

from __future__ import annotations

import json
import os
import resource
import sys


def equivalent(predicted: str, reference: str) -> bool:
    """Whether a LaTeX answer (boxed, in ``$...$``, or bare) equals the reference under math-verify."""
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig()]
    gold = parse(f"${reference}$", extraction_config=config, parsing_timeout=None)
    text = predicted if "\\boxed" in predicted or "$" in predicted else f"${predicted}$"
    pred = parse(text, extraction_config=config, parsing_timeout=None)
    return bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=None))


FUNCTIONS = {"equivalent": equivalent}


def serve() -> None:
    """Cap the address space, import the graders, say ``ready``, then answer requests until stdin closes."""
    limit = int(os.environ.get("DIPOD_WORKER_MEMORY_BYTES", "0"))
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    equivalent("1", "1")  # imports math-verify and sympy's lazily loaded parts before "ready": no call pays

    out, sys.stdout = sys.stdout, sys.stderr  # anything a grader prints cannot be mistaken for a reply
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            reply = {"ok": True, "result": FUNCTIONS[request["name"]](*request["args"])}
        except BaseException:  # any failure of the grader (MemoryError too) is a failed call
            reply = {"ok": False}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
