//! Turning text into index terms, the same way for messages and for queries.
//!
//! - Words are found by the Unicode word boundary rules (UAX #29, `unicode-segmentation`):
//!   letters and digits of any script, with apostrophes and dots inside a word kept
//!   (`don't`, `3.14`).
//! - Case folding: full Unicode lowercase (`char::to_lowercase`, so `İ`, `Σ`, `Ж` fold too),
//!   then the Greek final sigma `ς` is written as `σ`, so `ΟΔΟΣ`, `οδος` and `οδός`'s stem
//!   forms meet where they only differ by case. There is no accent stripping or Unicode
//!   normalisation (NFC input, as clients send, is the norm).
//! - Scripts written without spaces: UAX #29 gives every Han ideograph and every Hiragana
//!   character (and each Thai letter, having no dictionary) as a word of its own. Such a run of
//!   single-character words with nothing between them is indexed as its characters (unigrams)
//!   *and* as its overlapping pairs (bigrams). A query run of two or more characters looks up
//!   its bigrams only (`東京都` → `東京` AND `京都`), which finds the characters next to each
//!   other rather than anywhere in the message; a single-character query uses the unigram.
//!   Katakana and Hangul come out of UAX #29 as whole words and are indexed as such.
//! - A word longer than [`MAX_TERM_BYTES`] is cut there (at a character boundary), so a key
//!   stays small whatever a message holds.

use unicode_segmentation::UnicodeSegmentation;

/// The longest term, in bytes of UTF-8.
pub const MAX_TERM_BYTES: usize = 64;

/// One word: its folded form, and whether it was a lone character glued to the previous one
/// (a run of ideographs).
struct Word {
    term: String,
    single: bool,
    start: usize,
    end: usize,
}

fn fold(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        for l in c.to_lowercase() {
            out.push(if l == 'ς' { 'σ' } else { l });
        }
        if out.len() >= MAX_TERM_BYTES {
            break;
        }
    }
    if out.len() > MAX_TERM_BYTES {
        let mut cut = MAX_TERM_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn words(text: &str) -> Vec<Word> {
    text.unicode_word_indices()
        .map(|(start, w)| Word {
            term: fold(w),
            single: w.chars().nth(1).is_none() && !w.is_ascii(),
            start,
            end: start + w.len(),
        })
        .collect()
}

/// Runs of words: a run is one ordinary word, or a maximal sequence of adjacent lone
/// non-ASCII characters (ideographs) with no gap between them.
fn runs(words: &[Word]) -> Vec<&[Word]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let mut j = i + 1;
        if words[i].single {
            while j < words.len() && words[j].single && words[j].start == words[j - 1].end {
                j += 1;
            }
        }
        out.push(&words[i..j]);
        i = j;
    }
    out
}

/// The terms of a text to index, with repetitions (their count is the term frequency), and
/// the text's length in words.
pub fn document_terms(text: &str) -> (Vec<String>, u64) {
    let words = words(text);
    let mut terms = Vec::with_capacity(words.len());
    for run in runs(&words) {
        for w in run {
            terms.push(w.term.clone());
        }
        for pair in run.windows(2) {
            terms.push(format!("{}{}", pair[0].term, pair[1].term));
        }
    }
    (terms, words.len() as u64)
}

/// The terms a query must all match, without repetitions, and the words to highlight.
pub fn query_terms(text: &str) -> (Vec<String>, Vec<String>) {
    let words = words(text);
    let mut terms: Vec<String> = Vec::new();
    let mut highlights: Vec<String> = Vec::new();
    for run in runs(&words) {
        let whole: String = run.iter().map(|w| w.term.as_str()).collect();
        if !highlights.contains(&whole) {
            highlights.push(whole);
        }
        let run_terms: Vec<String> = if run.len() == 1 {
            vec![run[0].term.clone()]
        } else {
            run.windows(2)
                .map(|p| format!("{}{}", p[0].term, p[1].term))
                .collect()
        };
        for t in run_terms {
            if !terms.contains(&t) {
                terms.push(t);
            }
        }
    }
    (terms, highlights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin_and_case() {
        let (terms, len) = document_terms("Hello, WORLD! Don't panic.");
        assert_eq!(terms, ["hello", "world", "don't", "panic"]);
        assert_eq!(len, 4);
    }

    #[test]
    fn greek_final_sigma_and_cyrillic() {
        let (terms, _) = document_terms("ΟΔΟΣ οδος Привет МИР");
        assert_eq!(terms, ["οδοσ", "οδοσ", "привет", "мир"]);
    }

    #[test]
    fn han_runs_get_bigrams() {
        let (terms, len) = document_terms("我在東京。");
        assert_eq!(len, 4);
        assert_eq!(terms, ["我", "在", "東", "京", "我在", "在東", "東京"]);
        let (q, h) = query_terms("東京");
        assert_eq!(q, ["東京"]);
        assert_eq!(h, ["東京"]);
        let (q, _) = query_terms("京");
        assert_eq!(q, ["京"]);
    }

    #[test]
    fn long_words_are_cut() {
        let (terms, _) = document_terms(&"x".repeat(500));
        assert_eq!(terms[0].len(), MAX_TERM_BYTES);
    }
}
