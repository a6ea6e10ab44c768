"""The SSML subset as spans: each element's effect, what is ignored and named, and hostile or malformed XML
refused at once with a 400 (or, past a bound on what it becomes, a 413) naming the field."""

from __future__ import annotations

import time

import pytest

from serve_app.config.access import SSMLConfig
from serve_app.errors import BadRequest, PayloadTooLarge, ServiceError
from serve_app.text.lexicons import Entry, Lexicon, Rewriter
from serve_app.text.ssml import MarkedSpan, is_ssml, parse

LIMITS = SSMLConfig()


def spans(text: str, limits: SSMLConfig = LIMITS) -> list[MarkedSpan]:
    return parse(text, limits).spans


def test_what_counts_as_ssml() -> None:
    assert is_ssml("  <speak>hi</speak>") and is_ssml('<?xml version="1.0"?><speak/>') and is_ssml("<!DOCTYPE x>")
    assert not is_ssml("I <3 you") and not is_ssml("<b>bold</b> words") and not is_ssml("speak <speak>")


def test_a_break_is_the_pause_after_the_words_before_it() -> None:
    assert spans('<speak>Hello <break time="800ms"/> world. <break time="1.5s"/></speak>') == [
        MarkedSpan("Hello", pause_after=0.8),
        MarkedSpan("world.", pause_after=1.5),
    ]
    strong, default = spans('<speak>A<break strength="strong"/>B<break/>C</speak>')[:2]
    assert (strong.pause_after, default.pause_after) == (1.0, 0.75)
    assert spans('<speak><break time="1s"/>Hi</speak>')[0] == MarkedSpan("", pause_after=1.0)  # a pause alone


def test_sentences_paragraphs_aliases_pinyin_and_say_as_become_the_text() -> None:
    assert spans("<speak><p><s>One</s><s>two</s></p><p>three</p></speak>") == [
        MarkedSpan("One"),
        MarkedSpan("two"),
        MarkedSpan("three"),
    ]
    assert spans('<speak>The <sub alias="World Wide Web Consortium">W3C</sub> met.</speak>') == [
        MarkedSpan("The World Wide Web Consortium met.")
    ]
    said = (
        '<speak>在<phoneme alphabet="pinyin" ph="zuo1">作</phoneme>坊，'
        '<say-as interpret-as="cardinal">112</say-as>个</speak>'
    )
    assert spans(said) == [MarkedSpan("在{zuo1}坊，一百一十二个")]  # the document's language: Chinese
    english = '<speak xml:lang="en-US">On <say-as interpret-as="date" format="mdy">12/25/2024</say-as>.</speak>'
    assert spans(english) == [MarkedSpan("On December twenty-fifth twenty twenty-four.")]


def test_voices_and_rates_make_spans_of_their_own() -> None:
    text = (
        '<speak xmlns="http://www.w3.org/2001/10/synthesis" version="1.0">'
        '<voice name="alice">Hi Bob.</voice><voice name="bob">Hi <prosody rate="50%">Alice</prosody>.</voice>'
        '<prosody rate="x-fast">Quick.</prosody><prosody rate="+20%">Quicker.</prosody></speak>'
    )
    assert spans(text) == [
        MarkedSpan("Hi Bob.", voice="alice"),
        MarkedSpan("Hi", voice="bob"),
        MarkedSpan("Alice", voice="bob", speed=0.5),
        MarkedSpan(".", voice="bob"),
        MarkedSpan("Quick.", speed=1.5),
        MarkedSpan("Quicker.", speed=1.2),
    ]


def test_unknown_elements_and_attributes_are_spoken_and_named() -> None:
    markup = parse(
        '<speak><emphasis level="strong">Loud</emphasis> <prosody pitch="+2st">high</prosody></speak>', LIMITS
    )
    assert markup.spans == [MarkedSpan("Loud high")] and markup.ignored == ["emphasis", "prosody pitch"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("<speak>Hi<break time=1s/></speak>", "not well-formed (invalid token) at line 1, column 22"),
        ("<speak>\n  <p>Hi</speak>", "mismatched tag at line 2"),
        ("<p>Hi</p>", "root element is <speak>"),
        ('<speak><break time="soon"/></speak>', "seconds or milliseconds"),
        ('<speak><break time="11s"/></speak>', "at most 10 s"),
        ('<speak><break strength="huge"/></speak>', "one of none"),
        ("<speak><sub>W3C</sub></speak>", "'alias'"),
        ('<speak><phoneme alphabet="ipa" ph="təˈmɑːtəʊ">tomato</phoneme></speak>', "alphabet='ipa'"),
        ('<speak><phoneme alphabet="pinyin" ph="zuo">作</phoneme></speak>', "tone numbers"),
        ('<speak><say-as interpret-as="cardinal">many</say-as></speak>', "needs a number"),
        ('<speak><prosody rate="brisk">x</prosody></speak>', "prosody rate='brisk'"),
        ("<speak><voice>x</voice></speak>", "needs a name"),
    ],
)
def test_malformed_or_misused_markup_is_a_400_naming_text(text: str, words: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse(text, LIMITS)
    assert refused.value.field == "text" and words in refused.value.message


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">' for i in range(1, 10))
    + "]><speak>&lol9;</speak>"
)
HOSTILE = {
    "billion laughs": BILLION_LAUGHS,
    "external entity": '<!DOCTYPE speak [<!ENTITY x SYSTEM "file:///etc/passwd">]><speak>&x;</speak>',
    "external DTD": '<!DOCTYPE speak SYSTEM "http://example.com/x.dtd"><speak>hi</speak>',
    "deep nesting": "<speak>" + "<s>" * 100_000 + "x" + "</s>" * 100_000 + "</speak>",
    "a 1 MB attribute": f'<speak><sub alias="{"a" * 1_000_000}">x</sub></speak>',
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_xml_is_refused_fast(name: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ServiceError) as refused:
        parse(HOSTILE[name], LIMITS)
    assert refused.value.field == "text" and time.perf_counter() - started < 0.5  # milliseconds, given a loaded CI


def test_what_markup_becomes_is_bounded_by_the_limits() -> None:
    limits = SSMLConfig(max_break_s=10, max_total_break_s=15, max_voices=2, max_chars=20)
    cases = [
        '<speak>a<break time="10s"/>b<break time="6s"/></speak>',  # breaks past 15 s together
        "<speak>" + '<voice name="v">x</voice>' * 3 + "</speak>",
        '<speak><sub alias="a very long alias indeed">x</sub></speak>',  # 20 characters, once written out
        '<speak><say-as interpret-as="cardinal">123456789</say-as></speak>',
    ]
    for text in cases:
        with pytest.raises(PayloadTooLarge) as refused:
            parse(text, limits)
        assert refused.value.field == "text"


def test_lexicons_rewrite_the_text_as_written_and_sub_say_as_and_phoneme_win() -> None:
    rewrite = Rewriter([Lexicon((Entry("W3C", "World Wide Web Consortium"), Entry("12", "twelve"), Entry("作", "做")))])
    text = (
        '<speak xml:lang="en-US">The W3C and <sub alias="the consortium">W3C</sub> met '
        '<say-as interpret-as="digits">12</say-as> times in 12 rooms, '
        '<phoneme alphabet="pinyin" ph="zuo1">作</phoneme>坊.</speak>'
    )
    assert parse(text, LIMITS, rewrite=rewrite).spans == [
        MarkedSpan("The World Wide Web Consortium and the consortium met one two times in twelve rooms, {zuo1}坊.")
    ]
