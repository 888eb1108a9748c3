from benchmarks.tasks.facts import FactsTask, FactsWorld, chain_question
from core.config import FactsConfig

CFG = FactsConfig(n_entities=60, n_relations=6, n_train_chains=200, n_test_chains=50, eval_facts_per_bucket=20)


def test_world_is_deterministic_and_complete():
    a, b = FactsWorld(CFG, seed=3), FactsWorld(CFG, seed=3)
    assert a.objects == b.objects and len(a.facts) == 60 * 6
    assert len(set(a.entities)) == 60 and not set(a.entities) & set(a.relations)
    assert FactsWorld(CFG, seed=4).objects != a.objects


def test_popularity_is_zipf_and_bucketed():
    w = FactsWorld(CFG, seed=0)
    top = min(w.entities, key=w.rank.get)
    bottom = max(w.entities, key=w.rank.get)
    assert w.bucket(top) == "popular" and w.bucket(bottom) == "rare"
    assert w.weights[w.entities.index(top)] > w.weights[w.entities.index(bottom)]


def test_chains_decompose_into_hops_that_reach_the_answer():
    t = FactsTask(CFG, seed=0)
    test, train = t.load("test"), t.load("train")
    assert len(test) == 50 and len(train) == 200
    assert not {e.query for e in test} & {e.query for e in train}
    for e in test:
        rels, subj = e.meta["relations"], e.meta["subject"]
        assert e.query == chain_question(rels, subj, e.meta["form"])
        cur, answers = subj, []
        for i, (step, r) in enumerate(zip(e.steps, rels)):
            assert step.prompt == f"{r} of {subj if i == 0 else f'#{i}'}"
            assert t.gold_step_prompt(e, i, answers) == f"{r} of {cur}"
            cur = t.world.objects[(r, cur)]
            assert step.answer == cur
            answers.append(cur)
        assert e.answer == cur and t.score(cur, e) == 1.0 and t.score("nobody", e) == 0.0


def test_render_step_fills_references():
    from benchmarks.tasks.base import render_step

    assert render_step("city of #1", ["zorbak"]) == "city of zorbak"
    assert render_step("city of #2", ["zorbak"]) == "city of #2"  # unknown references stay
    assert render_step("city of #1", ["  "]) == "city of #1"  # an empty answer fills nothing


def test_hop_examples_cover_each_bucket():
    hops = FactsTask(CFG, seed=0).hop_examples()
    assert set(hops) == {"popular", "mid", "rare"}
    assert all(0 < len(v) <= 20 and all(e.bucket == b for e in v) for b, v in hops.items())


def test_shapes_vary_and_held_out_shapes_stay_out_of_every_split():
    t = FactsTask(CFG, seed=0)  # hops 1-4 in three forms; 5-6 hops and the form what-poss held out
    seen = {(e.bucket, e.meta["form"]) for split in ("train", "test") for e in t.load(split)}
    assert {b for b, _ in seen} == {"1hop", "2hop", "3hop", "4hop"} and {f for _, f in seen} == {"of", "the", "poss"}
    shapes = t.shape_sets(30)
    assert set(shapes) == {"1hop", "2hop", "3hop", "4hop", "5hop", "6hop", "form:of", "form:the", "form:poss", "form:what-poss"}
    assert [s for s in shapes if t.held_out(s)] == ["5hop", "6hop", "form:what-poss"]
    chains = {(e.meta["subject"], *e.meta["relations"]) for split in ("train", "test") for e in t.load(split)}
    for exs in shapes.values():
        assert len(exs) == 30 and not {(e.meta["subject"], *e.meta["relations"]) for e in exs} & chains
        for e in exs:  # every form reads back into the same chain
            back = t.parse_query(e.query)
            assert back.answer == e.answer and [s.prompt for s in back.steps] == [s.prompt for s in e.steps]


def test_shape_settings_are_checked():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="held_out_hops"):
        FactsConfig(hops=[1, 2], held_out_hops=[2, 3])
    with pytest.raises(ValidationError, match="forms"):
        FactsConfig(forms=["of", "yoda"])
    from typing import get_args

    from benchmarks.tasks.facts import FORMS
    from core.config import FactsForm

    assert set(get_args(FactsForm)) == set(FORMS)
