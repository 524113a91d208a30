"""wordcount: a CPU op with inputs and outputs, using gyoza.op.

Try it without Docker or a server (gyoza.op falls back to {} inputs, so pass
them in GYOZA_INPUTS as the worker does):

    GYOZA_INPUTS='{"text": "to be or not to be"}' python examples/wordcount/main.py
"""

from __future__ import annotations

import re
from collections import Counter

from gyoza import op


def main() -> None:
    inputs = op.inputs()
    text = inputs.get("text", "")
    top = int(inputs.get("top", 5))
    lowercase = inputs.get("lowercase", True)

    lines = text.splitlines() or [text]
    counts: Counter[str] = Counter()
    for number, line in enumerate(lines, start=1):
        words = re.findall(r"[\w']+", line.lower() if lowercase else line)
        counts.update(words)
        op.progress(100 * number / len(lines))
    op.log(f"counted {sum(counts.values())} words in {len(lines)} line(s)")

    most_common = [[word, n] for word, n in counts.most_common(top)]
    for word, n in most_common:
        op.log(f"{n:6d}  {word}")
    op.set_outputs(words=sum(counts.values()), unique=len(counts), top=most_common)


if __name__ == "__main__":
    main()
