"""``gyoza.op``, the helper for code inside containers, and how the worker reads it."""

from __future__ import annotations

import json
import subprocess
import sys

from gyoza import op
from gyoza.worker import Execution


def test_progress_prints_one_protocol_line_clamped_to_0_100(capsys):
    op.progress(42)
    op.progress(150)
    op.progress(12.5)
    assert capsys.readouterr().out.splitlines() == [
        'GYOZA:{"type":"PROGRESS","msg":42}',
        'GYOZA:{"type":"PROGRESS","msg":100}',
        'GYOZA:{"type":"PROGRESS","msg":12.5}',
    ]


def test_set_outputs_accepts_a_dict_or_keywords(capsys):
    op.set_outputs({"a": 1})
    op.set_outputs(b=[1, 2])
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line.removeprefix("GYOZA:")) for line in lines] == [
        {"type": "OUTPUTS", "outputs": {"a": 1}},
        {"type": "OUTPUTS", "outputs": {"b": [1, 2]}},
    ]


def test_log_is_a_plain_line(capsys):
    op.log("hello")
    assert capsys.readouterr().out == "hello\n"


def test_inputs_come_from_gyoza_inputs(monkeypatch):
    monkeypatch.setenv("GYOZA_INPUTS", '{"n": 3}')
    assert op.inputs() == {"n": 3}


def test_inputs_outside_gyoza_are_empty(monkeypatch):
    monkeypatch.delenv("GYOZA_INPUTS", raising=False)
    monkeypatch.setattr(op, "_INPUTS_FILE", "/nonexistent/inputs.json")
    assert op.inputs() == {}


def test_op_module_needs_only_the_standard_library():
    # Run it as a lone file, the way it would be copied into an image.
    code = (
        "import importlib.util, sys;"
        f"spec = importlib.util.spec_from_file_location('op', {op.__file__!r});"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "m.progress(5); m.set_outputs(x=1)"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ['GYOZA:{"type":"PROGRESS","msg":5}', 'GYOZA:{"type":"OUTPUTS","outputs":{"x":1}}']


def test_what_op_prints_the_worker_reads_as_progress_and_outputs(capsys):
    op.progress(30)
    op.set_outputs(score=0.9)
    op.log("plain line")
    print('GYOZA:{"type": "PROGRESS", "msg": "not a number"}')
    lines = capsys.readouterr().out.splitlines()
    decoded = [Execution._protocol(line.removeprefix("GYOZA:")) if line.startswith("GYOZA:") else None
               for line in lines]
    assert decoded == [
        {"type": "PROGRESS", "msg": 30},
        {"type": "OUTPUTS", "outputs": {"score": 0.9}},
        None,
        None,  # an invalid protocol line stays a LOG line
    ]
