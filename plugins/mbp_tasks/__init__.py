"""Built-in plugin: the ``lm``, ``vqa`` and ``classify`` task heads."""

from __future__ import annotations

from mbp.api import Register, TaskHead, hookimpl

from mbp_tasks.answer import AnswerParams, ClassifyHead, ClassifyParams, VqaHead
from mbp_tasks.lm import LmHead, LmParams


@hookimpl
def mbp_register_heads(register: Register[TaskHead]) -> None:
    register("lm", LmHead, LmParams)
    register("vqa", VqaHead, AnswerParams)
    register("classify", ClassifyHead, ClassifyParams)
