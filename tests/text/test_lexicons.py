"""Pronunciation lexicons: PLS files read (aliases, pinyin phonemes, the preferred pronunciation, other
alphabets skipped and counted), hostile ones refused, and the matching rule: longest first, whole words for
letters, anywhere for Chinese, case as each entry says, the first lexicon winning."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from serve_app.errors import BadRequest, PayloadTooLarge
from serve_app.text.lexicons import Entry, Lexicon, Rewriter, from_pls

DATA = Path(__file__).parents[1] / "data" / "pls"


def pls(name: str) -> Lexicon:
    return from_pls((DATA / name).read_text(), 1000, "lexicon")


def test_pls_files_in_the_specs_shape_read_as_aliases_and_pinyin() -> None:
    assert pls("a_alias.pls") == Lexicon((Entry("W3C", "World Wide Web Consortium"),))
    # ipa and x-sampa phonemes cannot be said by VoxCPM: skipped and counted; an alias preferred over them
    assert pls("b_multi.pls") == Lexicon((Entry("SQL", "sequel"), Entry("New York", "the Big Apple")), skipped=6)
    assert pls("c_zh.pls") == Lexicon((Entry("重庆", "{chong2}{qing4}"), Entry("AI", "人工智能")))


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ("<lexicon>", BadRequest),
        ('<lexicon version="1.0" alphabet="ipa" xml:lang="en"/>', BadRequest),  # not in PLS's namespace
        ('<!DOCTYPE lexicon [<!ENTITY e SYSTEM "file:///etc/passwd">]><lexicon>&e;</lexicon>', BadRequest),
    ],
)
def test_what_is_not_a_pls_document_is_refused_naming_the_field(document: str, error: type) -> None:
    with pytest.raises(error) as refused:
        from_pls(document, 1000, "lexicon")
    assert refused.value.field == "lexicon"


def test_a_lexicon_past_its_entry_limit_is_a_413() -> None:
    lexemes = "".join(f"<lexeme><grapheme>w{i}</grapheme><alias>a</alias></lexeme>" for i in range(11))
    namespace = "http://www.w3.org/2005/01/pronunciation-lexicon"
    document = f'<lexicon version="1.0" xmlns="{namespace}" alphabet="ipa" xml:lang="en">{lexemes}</lexicon>'
    with pytest.raises(PayloadTooLarge):
        from_pls(document, 10, "lexicon")


def test_matching_longest_first_whole_words_and_chinese_anywhere() -> None:
    rewrite = Rewriter(
        [
            Lexicon((Entry("AI", "Ay Eye"), Entry("New York", "the Big Apple"), Entry("New", "Old"))),
            Lexicon(
                (Entry("AI", "人工智能"), Entry("重庆", "{chong2}{qing4}"), Entry("nasa", "Nasa", case_sensitive=False))
            ),
        ]
    )
    assert rewrite("AI in New York, SAID AIs; New.") == "Ay Eye in the Big Apple, SAID AIs; Old."
    assert rewrite("我在重庆用AI做事") == "我在{chong2}{qing4}用Ay Eye做事"  # the first lexicon's AI
    assert rewrite("NASA, Nasa and nasa") == "Nasa, Nasa and Nasa"
    assert not Rewriter([]) and Rewriter([]).__call__("unchanged") == "unchanged"


def test_three_lexicons_of_a_thousand_entries_cost_little() -> None:
    lexicons = [Lexicon(tuple(Entry(f"word{n}x{i}", f"alias {i}") for i in range(1000))) for n in range(3)]
    rewrite = Rewriter(lexicons)
    text = "The quick brown fox jumps over word1x500 and word2x999 again. " * 16  # 1,000 characters
    started = time.perf_counter()
    said = rewrite(text)
    assert "alias 500" in said and "alias 999" in said
    assert time.perf_counter() - started < 0.5  # ms in fact (benchmarks/text_frontend.py); loose for a busy CI
