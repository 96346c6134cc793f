"""Parsing vectors for one searcher turn (spec §2 step 2)."""

from __future__ import annotations

import pytest

from s3core.search.parsing import ParsedAction, cut_at_first_query_end, parse_turn

Q = '<query>{"query": "capital of France"}</query>'

# (name, text, n_docs, select_max, query, ids, has_selection, search_complete, valid)
VECTORS = [
    # --- queries ---
    ("json query", Q, 8, 3, "capital of France", [], False, None, True),
    ("json query list value takes first", '<query>{"query": ["a b", "c"]}</query>', 8, 3, "a b", [], False, None, True),
    ("top-level json list", '<query>["first", "second"]</query>', 8, 3, "first", [], False, None, True),
    ("top-level json string", '<query>"quoted query"</query>', 8, 3, "quoted query", [], False, None, True),
    ("invalid json -> raw inner text", "<query>{query: who wrote Hamlet}</query>", 8, 3,
     "{query: who wrote Hamlet}", [], False, None, True),
    ("plain text query", "<query> who wrote Hamlet </query>", 8, 3, "who wrote Hamlet", [], False, None, True),
    ("json without query key -> raw inner", '<query>{"q": "x"}</query>', 8, 3, '{"q": "x"}', [], False, None, True),
    ("empty json query is no query", '<query>{"query": ""}</query>', 8, 3, None, [], False, None, False),
    ("null json query is no query", '<query>{"query": null}</query>', 8, 3, None, [], False, None, False),
    ("blank query is no query", "<query>   </query>", 8, 3, None, [], False, None, False),
    ("multiline json query", '<query>\n{\n  "query": "Mercury (planet) moons"\n}\n</query>', 8, 3,
     "Mercury (planet) moons", [], False, None, True),
    ("unicode query", '<query>{"query": "Café Nero founder"}</query>', 8, 3, "Café Nero founder", [], False, None, True),
    ("case-insensitive tags", '<QUERY>{"query": "x"}</Query>', 8, 3, "x", [], False, None, True),
    ("spaces inside tags", '< query >{"query": "x"}</ query >', 8, 3, "x", [], False, None, True),
    ("text after </query> discarded", Q + ' <important_info>[1]</important_info><search_complete>true</search_complete>',
     8, 3, "capital of France", [], False, None, True),
    ("second query ignored", Q + '<query>{"query": "other"}</query>', 8, 3, "capital of France", [], False, None, True),
    ("nested opener: last <query> before </query>", '<query>draft <query>{"query": "final"}</query>', 8, 3,
     "final", [], False, None, True),
    ("unclosed query with json is accepted", '<query>{"query": "no close tag"}', 8, 3, "no close tag", [], False, None, True),
    ("unclosed query with text is ignored", "<query>who wrote", 8, 3, None, [], False, None, False),
    ("closing tag without opener", 'who wrote hamlet</query>', 8, 3, None, [], False, None, False),
    # --- selections ---
    ("selection + query", "<important_info>[1, 2]</important_info>" + Q, 8, 3, "capital of France", [1, 2], True, None, True),
    ("ids without brackets are no selection", "<important_info>1,2</important_info>", 8, 3, None, [], False, None, False),
    ("trailing comma", "<important_info>[1,2,]</important_info>", 8, 3, None, [1, 2], True, None, False),
    ("quoted ids", '<important_info>["3", "1"]</important_info>', 8, 3, None, [3, 1], True, None, False),
    ("Doc n forms", "<important_info>[Doc 2, Doc 5]</important_info>", 8, 3, None, [2, 5], True, None, False),
    ("Doc n forms without brackets are no selection", "<important_info>Doc 2, Doc 5</important_info>", 8, 3, None,
     [], False, None, False),
    # placeholders copied from an instruction, cut-off and bare tags: no selection (the block keeps all docs)
    ("placeholder [...] is no selection", "<important_info>[...]</important_info>", 8, 3, None, [], False, None, False),
    ("cut-off list is no selection", "<important_info>[", 8, 3, None, [], False, None, False),
    ("cut-off list with ids is no selection", "<important_info>[1, 2", 8, 3, None, [], False, None, False),
    ("bare tag is no selection", "<important_info>", 8, 3, None, [], False, None, False),
    ("list with words is no selection", "<important_info>[1, and 2]</important_info>", 8, 3, None, [], False, None,
     False),
    ("placeholder query is no query", '<query>{"query": "..."}</query>', 8, 3, None, [], False, None, False),
    ("ids out of range dropped", "<important_info>[0, 9, 2, -1]</important_info>", 8, 3, None, [2], True, None, False),
    ("duplicates dropped", "<important_info>[2, 2, 1, 2]</important_info>", 8, 3, None, [2, 1], True, None, False),
    ("beyond select_max dropped", "<important_info>[1, 2, 3, 4, 5]</important_info>", 8, 3, None, [1, 2, 3], True, None, False),
    ("first select_max VALID ids kept", "<important_info>[9, 1, 1, 10, 2, 3, 4]</important_info>", 8, 3, None,
     [1, 2, 3], True, None, False),
    ("select_max 1", "<important_info>[4, 2]</important_info>", 8, 1, None, [4], True, None, False),
    ("order preserved", "<important_info>[5, 3, 1]</important_info>", 8, 3, None, [5, 3, 1], True, None, False),
    ("explicit empty list is a selection of nothing", "<important_info>[]</important_info>", 8, 3, None, [], True, None, False),
    ("blank content is no selection", "<important_info> </important_info>", 8, 3, None, [], False, None, False),
    ("'none' is no selection", "<important_info>None</important_info>", 8, 3, None, [], False, None, False),
    ("all ids invalid is no selection", "<important_info>[9, 12]</important_info>", 8, 3, None, [], False, None, False),
    ("words without ids are no selection", "<important_info>the first one</important_info>", 8, 3, None, [], False, None, False),
    ("non-integer ids dropped", "<important_info>[1.5, 2.0, 3]</important_info>", 8, 3, None, [2, 3], True, None, False),
    ("empty latest block", "<important_info>[1]</important_info>", 0, 3, None, [], False, None, False),
    ("newlines inside list", "<important_info>[\n 1,\n 3\n]</important_info>", 8, 3, None, [1, 3], True, None, False),
    ("unclosed important_info ends at <", "<important_info>[1, 2]<search_complete>true</search_complete>", 8, 3, None,
     [1, 2], True, True, True),
    ("unclosed important_info ends at newline", "<important_info> [2, 4]\nmore text 7", 8, 3, None, [2, 4], True, None,
     False),
    ("only first important_info counts", "<important_info>[1]</important_info><important_info>[2]</important_info>", 8, 3,
     None, [1], True, None, False),
    # --- search_complete ---
    ("done true", "<search_complete>true</search_complete>", 8, 3, None, [], False, True, True),
    ("done True", "<search_complete>True</search_complete>", 8, 3, None, [], False, True, True),
    ("done yes", "<search_complete> YES </search_complete>", 8, 3, None, [], False, True, True),
    ("done 1", "<search_complete>1</search_complete>", 8, 3, None, [], False, True, True),
    ("done y", "<search_complete>y</search_complete>", 8, 3, None, [], False, True, True),
    ("done quoted", '<search_complete>"true".</search_complete>', 8, 3, None, [], False, True, True),
    ("false is not done", "<search_complete>false</search_complete>", 8, 3, None, [], False, False, False),
    ("garbage is not done", "<search_complete>maybe later</search_complete>", 8, 3, None, [], False, False, False),
    ("false + query is valid", "<search_complete>false</search_complete>" + Q, 8, 3, "capital of France", [], False,
     False, True),
    ("done + query: both parsed", "<search_complete>true</search_complete>" + Q, 8, 3, "capital of France", [], False,
     True, True),
    ("full turn", "<think>Doc 2 says Paris.</think>\n<important_info>[2]</important_info>\n"
     "<search_complete>true</search_complete>", 8, 3, None, [2], True, True, True),
    # --- think ---
    ("tags inside think ignored", "<think><important_info>[1]</important_info><search_complete>true</search_complete>"
     "</think>" + Q, 8, 3, "capital of France", [], False, None, True),
    ("unclosed think keeps the action", "<think>let me search " + Q, 8, 3, "capital of France", [], False, None, True),
    ("query inside think is cut first (spec: cut at first </query>)", "<think>maybe <query>x</query></think>" + Q, 8, 3,
     "x", [], False, None, True),
    # --- nothing usable ---
    ("empty text", "", 8, 3, None, [], False, None, False),
    ("no tags", "Paris is the capital of France.", 8, 3, None, [], False, None, False),
    ("only think", "<think>hmm</think>", 8, 3, None, [], False, None, False),
    ("broken angle brackets", "<<<query>>> </query <important_info", 8, 3, None, [], False, None, False),
    ("endless text", "bla " * 2000, 8, 3, None, [], False, None, False),
]


@pytest.mark.parametrize(
    "text,n_docs,select_max,query,ids,has_sel,complete,valid",
    [v[1:] for v in VECTORS],
    ids=[v[0] for v in VECTORS],
)
def test_parse_vectors(text, n_docs, select_max, query, ids, has_sel, complete, valid):
    p = parse_turn(text, n_docs, select_max)
    assert isinstance(p, ParsedAction)
    assert p.query == query
    assert p.important_ids == ids
    assert p.has_selection is has_sel
    assert p.search_complete is complete
    assert p.valid is valid
    assert p.done is (complete is True)


def test_vector_count():
    assert len(VECTORS) >= 30


def test_truncated_text_ends_at_first_query_end():
    text = Q + " trailing junk </query> more"
    p = parse_turn(text, 8, 3)
    assert p.truncated_text == Q
    assert cut_at_first_query_end(text) == Q
    assert cut_at_first_query_end("no end tag") == "no end tag"


@pytest.mark.parametrize(
    "junk",
    [None, 123, "\x00\x01<query>\x00</query>", "<important_info>[" + "9" * 5000 + "]</important_info>",
     "<query>" + "[" * 10000 + "</query>", "<query>" + '{"query": {"nested": 1}}' + "</query>",
     "<search_complete></search_complete>", "</think></think><think>", "<important_info>[-0, +2]</important_info>"],
)
def test_never_raises(junk):
    p = parse_turn(junk, 5, 3)  # type: ignore[arg-type]
    assert isinstance(p, ParsedAction)
    assert all(1 <= i <= 5 for i in p.important_ids)
    assert len(p.important_ids) <= 3


def test_deeply_nested_json_query_falls_back_to_raw_text():
    inner = "[" * 10000 + "x" + "]" * 10000
    p = parse_turn(f"<query>{inner}</query>", 5, 3)
    assert p.valid and p.query == inner
