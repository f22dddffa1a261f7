from __future__ import annotations

from fineinstructions.records import Template
from fineinstructions.stages.template_dedup import TemplateDedupStage
from fineinstructions.stages.templatize import template_id


def tpl(text: str) -> Template:
    return Template(template_id=template_id(text), template=text,
                    compatible_document_description="An article that fits the template.")


def test_exact_and_near_duplicates_are_absorbed_with_popularity():
    bank = [
        tpl("What is <fi>scientific concept</fi>?"),
        tpl("what is <fi>Scientific   concept</fi>"),  # the same once case, spacing and punctuation go
        tpl("How do I install <fi>package</fi> on <fi>operating system</fi> using the command line tool?"),
        tpl("How do I install <fi>package</fi> on <fi>os</fi> using the command line tool quickly?"),  # near
        tpl("Who was <fi>notable person</fi>?"),
    ]
    result = TemplateDedupStage(near_duplicate_threshold=0.6).process(bank)
    kept = {t.template: t.popularity for t in result.records}
    assert kept == {
        "What is <fi>scientific concept</fi>?": 2,
        "How do I install <fi>package</fi> on <fi>operating system</fi> using the command line tool?": 2,
        "Who was <fi>notable person</fi>?": 1,
    }
    reasons = sorted(r.reason for r in result.rejected)
    assert reasons == ["duplicate_template", "near_duplicate_template"]
    assert all(r.row["duplicate_of"] in {t.template_id for t in result.records} for r in result.rejected)


def test_distinct_templates_survive_and_near_dedup_can_be_off():
    bank = [tpl("What causes <fi>weather event</fi>?"), tpl("What prevents <fi>disease</fi> in <fi>animal</fi>?"),
            tpl("What is the <fi>boiling point</fi> of <fi>substance</fi>?"),
            tpl("What is the <fi>ethos</fi> of <fi>company</fi>?")]  # same skeleton, different request
    assert len(TemplateDedupStage().process(bank).records) == 4
    twins = [tpl("Tell me about <fi>x</fi> and its history in detail"),
             tpl("Tell me about <fi>x</fi> and its history in great detail")]
    assert len(TemplateDedupStage(near_duplicate_threshold=None).process(twins).records) == 2
