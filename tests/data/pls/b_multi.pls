<?xml version="1.0" encoding="UTF-8"?>
<lexicon version="1.0"
      xmlns="http://www.w3.org/2005/01/pronunciation-lexicon"
      alphabet="ipa" xml:lang="en-US">
  <meta name="author" content="tests"/>
  <lexeme xml:id="tomato">
    <grapheme>tomato</grapheme>
    <grapheme>Tomato</grapheme>
    <phoneme>təˈmeɪtoʊ</phoneme>
    <phoneme prefer="true">təˈmɑːtəʊ</phoneme>
    <example>I like tomato soup.</example>
  </lexeme>
  <lexeme>
    <grapheme>read</grapheme>
    <phoneme>ɹiːd</phoneme>
    <phoneme>ɹɛd</phoneme>
  </lexeme>
  <lexeme>
    <grapheme>SQL</grapheme>
    <alias>sequel</alias>
    <phoneme alphabet="x-sampa" prefer="true">"si:kw@l</phoneme>
  </lexeme>
  <lexeme>
    <grapheme>New York</grapheme>
    <alias prefer="true">the Big Apple</alias>
    <phoneme>nuː ˈjɔːɹk</phoneme>
  </lexeme>
</lexicon>
