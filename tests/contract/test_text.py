"""Text search: every word, case-insensitive, literal."""

from __future__ import annotations

import pytest

from eventpost.storage import Query, Range
from tests.contract.conftest import needs


@pytest.fixture
def texts(store, events):
    needs(store, "text")
    docs = [
        ("jazz", "Jazz night", "Live music at the club"),
        ("rock", "Rock and roll", "Guitars, drums: (loud) $5 entry"),
        ("talk", "Python talk", "Not only for experts: regex [a-z]+ and C++ near you"),
        ("film", "Open-air film", "Bring a blanket. jazz soundtrack"),
        ("cafe", "Café concert", "Crème brûlée after the show"),
    ]
    for n, (doc_id, title, description) in enumerate(docs):
        events.insert(
            {
                "id": doc_id,
                "title": title,
                "description": description,
                "starts_at": f"2026-01-0{n + 1}T20:00:00.000000Z",
            }
        )
    return events


def search(coll, text: str, **query) -> list[str]:
    return sorted(doc["id"] for doc in coll.find(Query(text=text, limit=50, **query)).items)


def test_a_word_is_found_case_insensitively(texts):
    assert search(texts, "jazz") == ["film", "jazz"]
    assert search(texts, "JAZZ") == ["film", "jazz"]
    assert search(texts, "Night") == ["jazz"]


def test_every_word_must_be_there(texts):
    assert search(texts, "jazz night") == ["jazz"]
    assert search(texts, "jazz guitars") == []
    assert search(texts, "  music   club ") == ["jazz"]


def test_title_and_description_are_searched(texts):
    assert search(texts, "blanket") == ["film"]
    assert search(texts, "film blanket") == ["film"]


def test_words_are_whole_words(texts):
    assert search(texts, "jaz") == []
    assert search(texts, "ja*") == []


@pytest.mark.parametrize("word", ["AND", "and", "OR", "NOT", "NEAR"])
def test_operator_words_are_searched_literally(texts, word):
    expected = {"and": ["rock", "talk"], "not": ["talk"], "near": ["talk"]}
    assert search(texts, word) == expected.get(word.lower(), [])


def test_operator_words_between_words_are_words(texts):
    assert search(texts, "rock AND roll") == ["rock"]
    assert search(texts, "jazz OR rock") == []
    assert search(texts, "NOT jazz") == []
    assert search(texts, "python NEAR talk") == ["talk"]


@pytest.mark.parametrize(
    "text",
    ['"', '"*:^()$.[]|\\', "*", "^", "(", ")", ":", "$", ".", "[a-z]+", "a|b", "\\", "-x", "{}"],
)
def test_special_characters_are_never_syntax(texts, text):
    texts.find(Query(text=text))  # no error
    texts.find(Query(text=f"jazz {text}"))


def test_text_made_of_punctuation_only_matches_nothing(texts):
    assert search(texts, '"*:^()$.[]|\\') == []
    assert search(texts, "") == []


def test_punctuation_around_words_is_ignored(texts):
    assert search(texts, "(loud)") == ["rock"]
    assert search(texts, '"drums:"') == ["rock"]
    assert search(texts, "$5") == ["rock"]
    assert search(texts, "c++") == ["talk"]


def test_accents(texts):
    assert search(texts, "café") == ["cafe"]
    assert search(texts, "CRÈME") == ["cafe"]


def test_text_follows_updates_and_deletes(texts):
    texts.update("rock", {"title": "Jazz and roll"})
    assert search(texts, "jazz") == ["film", "jazz", "rock"]
    texts.delete("film")
    assert search(texts, "jazz") == ["jazz", "rock"]


def test_text_with_filters_sort_and_pages(texts):
    query = Query(
        text="the",
        where={"starts_at": Range(gte="2026-01-01T00:00:00.000000Z")},
        sort=(("starts_at", -1),),
        limit=1,
    )
    first = texts.find(query)
    assert [d["id"] for d in first.items] == ["cafe"]
    second = texts.find(Query(**{**query.__dict__, "cursor": first.next_cursor}))
    assert [d["id"] for d in second.items] == ["jazz"]
    assert second.next_cursor is None
