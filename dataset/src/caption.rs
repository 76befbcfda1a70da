//! Captions cleaned the way ALBEF's `pre_caption` does (ALBEF `dataset/utils.py`), so that the
//! `text` column is what the model trains on while `caption` keeps what the source gave.

/// Words kept by `pre_caption` in ALBEF's pretraining config (`max_words: 30`).
pub const MAX_WORDS: usize = 30;

/// Lower-case, drop `,.'!?"()*#:;~`, turn `-` and `/` into spaces, `<person>` into `person`,
/// collapse whitespace, keep at most `max_words` words.
pub fn pre_caption(caption: &str, max_words: usize) -> String {
    let lower = caption.to_lowercase().replace("<person>", "person");
    let mut cleaned = String::with_capacity(lower.len());
    for c in lower.chars() {
        match c {
            ',' | '.' | '\'' | '!' | '?' | '"' | '(' | ')' | '*' | '#' | ':' | ';' | '~' => {}
            '-' | '/' => cleaned.push(' '),
            c => cleaned.push(c),
        }
    }
    cleaned
        .split_whitespace()
        .take(max_words)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_albef() {
        assert_eq!(
            pre_caption("  A Dog's \"Best\" friend: (the) CAT!  ", 30),
            "a dogs best friend the cat"
        );
        assert_eq!(
            pre_caption("black-and-white/photo", 30),
            "black and white photo"
        );
        assert_eq!(
            pre_caption("<PERSON> at the beach", 30),
            "person at the beach"
        );
        assert_eq!(pre_caption("", 30), "");
        assert_eq!(pre_caption("Été à Zürich", 30), "été à zürich");
    }

    #[test]
    fn keeps_at_most_max_words() {
        let long = (0..100)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let out = pre_caption(&long, MAX_WORDS);
        assert_eq!(out.split(' ').count(), 30);
        assert!(out.ends_with("w29"));
    }
}
