"""The guides stay true: every YAML block in docs/ loads through the loader of its workflow
(unknown keys, bad values and missing trainers are errors there), and the TDA guide's plan for a
reference model plans its trials."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```ya?ml\n(.*?)^```", re.S | re.M)


def _blocks(name):
    return [yaml.safe_load(m.group(1)) for m in BLOCK.finditer((ROOT / "docs" / name).read_text())]


def test_every_yaml_block_in_the_guides_parses():
    count = 0
    for doc in DOCS:
        for m in BLOCK.finditer(doc.read_text()):
            assert isinstance(yaml.safe_load(m.group(1)), dict), f"{doc.name}: {m.group(1)[:60]}"
            count += 1
    assert count >= 7  # scaling, search, studies (3), tda, uq when this test was written


def test_study_and_search_files_in_the_guides_load(monkeypatch):
    from candle.search.driver import load_search_config
    from candle.workflow.study import load_study_config

    monkeypatch.chdir(ROOT)  # the guides' trainer paths are relative to the project root
    (search,) = _blocks("search.md")
    cfg = load_search_config(search)
    assert cfg.study.trainer == "examples/quickstart.py:BreastCancer"
    study, *executors = _blocks("studies.md")
    assert load_study_config(study).grid
    for executor in executors:
        load_study_config({**study, **executor})


def test_uq_fragment_in_the_guide_loads():
    from candle.uq.driver import load_uq_config

    (fragment,) = _blocks("uq.md")
    base = {"name": "doc", "trainer": "uno", "directory": "studies/doc"}
    cfg = load_uq_config({**base, **fragment})
    assert cfg.study.name == "doc"


def test_tda_guide_plan_for_uno_plans_both_sections(tmp_path, monkeypatch):
    from candle.tda.driver import prepare

    (plan,) = _blocks("tda.md")
    assert plan["trainer"] == "uno"
    monkeypatch.chdir(tmp_path)
    plan["params"]["synthetic_samples"] = 600  # the guide's 6,000 rows, smaller
    _, trials, cls = prepare(plan)
    assert cls.__name__ == "UnoTDA"
    sections = {t.extra["section"] for t in trials}
    assert sections == {"cross_study", "learning_curve"}
