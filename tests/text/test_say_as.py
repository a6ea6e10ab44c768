"""``<say-as>`` written out in words, in English and Chinese, as the kind it names (never a guessed one)."""

from __future__ import annotations

import pytest

from serve_app.errors import BadRequest
from serve_app.text.say_as import language, say_as, zh_cardinal


@pytest.mark.parametrize(
    ("kind", "text", "lang", "date_format", "said"),
    [
        ("cardinal", "1,234", "en", None, "one thousand, two hundred and thirty-four"),  # not "twelve thirty-four"
        ("ordinal", "21st", "en", None, "twenty-first"),
        ("date", "2024-03-05", "en", None, "March fifth twenty twenty-four"),
        ("date", "05/03/2024", "en", "dmy", "March fifth twenty twenty-four"),
        ("date", "12/25", "en", "md", "December twenty-fifth"),
        ("time", "3:45 pm", "en", None, "three forty-five P M"),
        ("time", "09:05", "en", None, "nine oh five"),
        ("telephone", "555-1234", "en", None, "five five five, one two three four"),  # not a range
        ("digits", "2024", "en", None, "two zero two four"),
        ("characters", "W3C", "en", None, "W three C"),
        ("spell-out", "NASA", "en", None, "N A S A"),
        ("cardinal", "112", "zh", None, "一百一十二"),  # wetext reads it digit by digit
        ("cardinal", "100010000", "zh", None, "一亿零一万"),
        ("ordinal", "3", "zh", None, "第三"),
        ("date", "2024-03-05", "zh", None, "二零二四年三月五日"),
        ("time", "12:30", "zh", None, "十二点三十分"),
        ("time", "8:05", "zh", None, "八点零五分"),
        ("telephone", "110-119", "zh", None, "一一零，一一九"),
    ],
)
def test_each_kind_in_each_language(kind: str, text: str, lang: str, date_format: str | None, said: str) -> None:
    assert say_as(kind, text, lang, date_format) == said


@pytest.mark.parametrize(
    ("number", "written"),
    [
        (10, "十"),
        (101, "一百零一"),
        (1010, "一千零一十"),
        (10001, "一万零一"),
        (100500, "十万零五百"),
        (110000, "十一万"),
    ],
)
def test_chinese_numerals_say_each_zero_once(number: int, written: str) -> None:
    assert zh_cardinal(number) == written


@pytest.mark.parametrize(
    ("kind", "text", "date_format"),
    [("cardinal", "twelve", None), ("date", "2024-13-05", "ymd"), ("date", "2024-03", "ymd"), ("time", "25:00", None)],
)
def test_what_is_not_of_its_kind_is_a_400_naming_text(kind: str, text: str, date_format: str | None) -> None:
    with pytest.raises(BadRequest) as refused:
        say_as(kind, text, "en", date_format)
    assert refused.value.field == "text"


def test_the_language_is_the_declared_one_else_the_scripts() -> None:
    assert [language("123", "zh-CN"), language("123", "en-US"), language("三点", None), language("3", None)] == [
        "zh",
        "en",
        "zh",
        "en",
    ]
