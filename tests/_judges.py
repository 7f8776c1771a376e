"""Judge doubles shared by the reward tests."""

from __future__ import annotations

from trl_rubric.judges import RuleJudge


class CountingJudge(RuleJudge):
    """A rule judge that records the prompts and completions it was asked to grade."""

    def __init__(self, rules=None):
        super().__init__(rules)
        self.seen_prompts, self.seen_completions = [], []

    async def grade_many(self, prompts, completions, rubrics, **kwargs):
        self.seen_prompts.extend(prompts)
        self.seen_completions.extend(completions)
        return await super().grade_many(prompts, completions, rubrics, **kwargs)
