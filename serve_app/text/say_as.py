"""SSML's ``<say-as>``: a token read as the kind it names, written out in words for the model, in English or
Chinese (the languages VoxCPM reads).

Numbers, dates and times are written out here rather than left to voxcpm's normalizer (wetext), which guesses
the kind from the shape ("1234" as a year, "12345" and "112" digit by digit in Chinese): ``<say-as>`` says the
kind, so the reading must follow it. English numbers by ``num2words``; Chinese ones by the small converter below,
since ``num2words`` has no Chinese. Letters, digits and telephone numbers are rules of a line each (a general
normalizer reads "555-1234" as a range).
"""

from __future__ import annotations

import re

from num2words import num2words

from serve_app.errors import BadRequest

KINDS = ("characters", "spell-out", "cardinal", "ordinal", "digits", "date", "time", "telephone")
DATE_FORMATS = ("mdy", "dmy", "ymd", "md", "dm", "ym", "my", "d", "m", "y")
MONTHS = "January February March April May June July August September October November December".split()
EN_DIGITS = "zero one two three four five six seven eight nine".split()
ZH_DIGITS = "零一二三四五六七八九"
_CJK = re.compile(r"[\u3400-\u9fff]")
_NUMBER = re.compile(r"[+-]?\d[\d,]*")
MAX_NUMBER = 10**15  # larger is read digit by digit: no one says a 16-digit number as a cardinal


def language(text: str, declared: str | None) -> str:
    """``zh`` or ``en``: the ``xml:lang`` in force, else Chinese where the text has Chinese characters."""
    if declared:
        return "zh" if declared.lower().startswith(("zh", "yue", "cmn")) else "en"
    return "zh" if _CJK.search(text) else "en"


def say_as(kind: str, text: str, lang: str, date_format: str | None = None) -> str:
    """``text`` read as ``kind`` (one of ``KINDS``), in words; a 400 naming ``text`` where it is not one."""
    token = " ".join(text.split())
    if kind in ("characters", "spell-out"):  # one by one, a digit by its name
        names = ZH_DIGITS if lang == "zh" else EN_DIGITS
        spelled = (names[int(char)] if char.isdecimal() and char.isascii() else char for char in token.replace(" ", ""))
        return " ".join(spelled)
    if kind in ("digits", "telephone"):
        return _digits(token, lang, grouped=kind == "telephone")
    if kind in ("cardinal", "ordinal"):
        written = re.sub(r"(?i)(st|nd|rd|th)$", "", token) if kind == "ordinal" else token
        if not _NUMBER.fullmatch(written):
            raise BadRequest(f"<say-as interpret-as={kind!r}> needs a number, not {token!r}", "text")
        number = int(written.replace(",", ""))
        if abs(number) >= MAX_NUMBER:
            return _digits(written, lang, grouped=False)
        return _ordinal(number, lang) if kind == "ordinal" else _cardinal(number, lang)
    if kind == "date":
        return _date(token, lang, date_format or "ymd")
    return _time(token, lang)


def _cardinal(number: int, lang: str) -> str:
    return zh_cardinal(number) if lang == "zh" else num2words(number, lang="en")


def _ordinal(number: int, lang: str) -> str:
    return "第" + zh_cardinal(number) if lang == "zh" else num2words(number, lang="en", to="ordinal")


def _digits(token: str, lang: str, grouped: bool) -> str:
    """Each digit by its name; a telephone number's groups (its separators) kept as pauses."""
    names = ZH_DIGITS if lang == "zh" else EN_DIGITS
    groups = re.findall(r"\d+", token)
    if not groups:
        raise BadRequest(f"<say-as> of digits needs digits, not {token!r}", "text")
    if lang == "zh":
        return ("，" if grouped else "").join("".join(names[int(d)] for d in group) for group in groups)
    return (", " if grouped else " ").join(" ".join(names[int(d)] for d in group) for group in groups)


def _date(token: str, lang: str, date_format: str) -> str:
    """A date in the order ``date_format`` names its fields (separators free), never a guessed order."""
    fields = [int(part) for part in re.split(r"\D+", token) if part]
    if date_format not in DATE_FORMATS:
        raise BadRequest(f"<say-as> date format {date_format!r} is not one of {', '.join(DATE_FORMATS)}", "text")
    if len(fields) != len(date_format):
        raise BadRequest(f"date {token!r} does not have the fields of format {date_format!r}", "text")
    date = dict(zip(date_format, fields, strict=True))
    if not 1 <= date.get("m", 1) <= 12 or not 1 <= date.get("d", 1) <= 31:
        raise BadRequest(f"{token!r} is not a date in format {date_format!r}", "text")
    if lang == "zh":
        year = "".join(ZH_DIGITS[int(d)] for d in str(date["y"])) + "年" if "y" in date else ""
        month = zh_cardinal(date["m"]) + "月" if "m" in date else ""
        return year + month + (zh_cardinal(date["d"]) + "日" if "d" in date else "")
    words = [MONTHS[date["m"] - 1]] if "m" in date else []
    if "d" in date:
        day = num2words(date["d"], to="ordinal")
        words.append(day if "m" in date else f"the {day}")
    if "y" in date:
        words.append(num2words(date["y"], to="year"))
    return " ".join(words)


def _time(token: str, lang: str) -> str:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?\s*(?:([ap])\.?\s*m\.?)?", token, re.I)
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise BadRequest(f"<say-as interpret-as='time'> needs a time such as 09:30 or 3:45 pm, not {token!r}", "text")
    hour, minute, half = int(match[1]), int(match[2]), match[4]
    if lang == "zh":
        prefix = {"a": "上午", "p": "下午"}.get((half or "").lower(), "")
        minutes = "整" if not minute else ("零" if minute < 10 else "") + f"{zh_cardinal(minute)}分"
        return f"{prefix}{zh_cardinal(hour)}点{minutes}"
    words = num2words(hour)
    if minute:
        words += (" oh " if minute < 10 else " ") + num2words(minute)
    elif not half:
        words += " o'clock" if hour <= 12 else " hundred"
    return words + (f" {half.upper()} M" if half else "")


def zh_cardinal(number: int) -> str:
    """A number in Chinese numerals, read as a number (wetext reads some as digits: "112" as 幺幺二)."""
    if number < 0:
        return "负" + zh_cardinal(-number)
    if number == 0:
        return "零"
    groups = []
    while number:
        number, group = divmod(number, 10000)
        groups.append(group)
    out: list[str] = []
    gap = False
    for power in range(len(groups) - 1, -1, -1):
        group = groups[power]
        if group == 0:
            gap = bool(out)
            continue
        if out and (gap or group < 1000):
            out.append("零")
        out += [_zh_group(group, leading=not out), ("", "万", "亿", "万亿")[power]]
        gap = False
    return "".join(out)


def _zh_group(number: int, leading: bool) -> str:
    """Up to four digits (千百十个), a zero said once where digits are skipped, 一十 as 十 at the start."""
    out: list[str] = []
    zero = False
    for unit, size in (("千", 1000), ("百", 100), ("十", 10), ("", 1)):
        digit, number = divmod(number, size)
        if digit:
            if zero:
                out.append("零")
                zero = False
            if not (digit == 1 and unit == "十" and not out and leading):
                out.append(ZH_DIGITS[digit])
            out.append(unit)
        elif out:
            zero = True
    return "".join(out)
