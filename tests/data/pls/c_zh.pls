<?xml version="1.0" encoding="UTF-8"?>
<lexicon version="1.0"
      xmlns="http://www.w3.org/2005/01/pronunciation-lexicon"
      alphabet="x-pinyin" xml:lang="zh-CN">
  <lexeme>
    <grapheme>重庆</grapheme>
    <phoneme>chong2 qing4</phoneme>
  </lexeme>
  <lexeme>
    <grapheme>AI</grapheme>
    <alias>人工智能</alias>
  </lexeme>
</lexicon>
