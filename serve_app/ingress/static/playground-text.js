// The playground's text tools: SSML examples put in the text box (any text starting with <speak> is SSML), and
// the caller's pronunciation lexicons: listed, uploaded (a PLS file or JSON entries), deleted, and chosen for
// requests (requestLexicons(), read by playground.js's requestForm). Uses playground.js's helpers.
"use strict";

const SSML_EXAMPLES = {
  pause: '<speak>Let me think.<break time="800ms"/>Yes, that works.</speak>',
  alias: '<speak>The <sub alias="World Wide Web Consortium">W3C</sub> sets web standards.</speak>',
  numbers: '<speak>Call <say-as interpret-as="telephone">555-1234</say-as> before ' +
    '<say-as interpret-as="date" format="mdy">12/25/2026</say-as>, ' +
    '<say-as interpret-as="cardinal">1,234</say-as> seats left.</speak>',
  pinyin: '<speak>这几日<phoneme alphabet="pinyin" ph="zuo1">作</phoneme>坊里很忙。</speak>',
  rate: '<speak><prosody rate="slow">Slowly, please.</prosody> <prosody rate="fast">Now quickly!</prosody></speak>',
};

function requestLexicons() {
  return Array.from($("lexicons").selectedOptions, (option) => option.value);
}

async function loadLexicons() {
  const { lexicons } = await loaded("/api/lexicons");
  const chosen = new Set(requestLexicons());
  $("lexicons").replaceChildren(...lexicons.map((lexicon) => {
    const option = new Option(lexicon.name, lexicon.lexicon_id);
    option.selected = chosen.has(lexicon.lexicon_id);
    return option;
  }));
  $("lexicon-list").replaceChildren(...lexicons.map((lexicon) => {
    const skipped = lexicon.skipped ? `, ${lexicon.skipped} skipped (other alphabets)` : "";
    const text = `${lexicon.name} — ${lexicon.entries} entries${skipped}`;
    return storedItem(text, `lexicon ${lexicon.name}`, `/api/lexicons/${lexicon.lexicon_id}`, loadLexicons);
  }));
}

async function saveLexicon(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("name", $("lexicon-name").value);
  form.append("file", $("lexicon-file").files[0], "lexicon");
  const response = await api("/api/lexicons", { method: "POST", body: form });
  showError(response.ok ? "" : await apiError(response));
  if (response.ok) await loadLexicons();
}

$("ssml-example").addEventListener("change", () => {
  const example = SSML_EXAMPLES[$("ssml-example").value];
  if (example) $("text").value = example;
  $("ssml-example").value = "";
});
$("lexicon-form").addEventListener("submit", saveLexicon);
loadLexicons().catch((error) => showError(`Cannot load lexicons: ${error.message}`));
