//! Caption cleaning as ALBEF's `pre_caption` does it (dataset/utils.py): lower-case, drop
//! `,.'!?"()*#:;~`, `-` and `/` become spaces, `<person>` becomes `person`, whitespace collapses,
//! at most `max_words` words. Idempotent, so it is safe on the already-cleaned `text` column.

pub fn pre_caption(caption: &str, max_words: usize) -> String {
    let lowered = caption.to_lowercase().replace("<person>", "person");
    let mapped: String = lowered
        .chars()
        .filter(|c| !",.'!?\"()*#:;~".contains(*c))
        .map(|c| if c == '-' || c == '/' { ' ' } else { c })
        .collect();
    mapped
        .split_whitespace()
        .take(max_words)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::pre_caption;

    #[test]
    fn cleans_like_the_reference() {
        assert_eq!(
            pre_caption(
                "A <person> riding a Blue-green bike/scooter, (downtown)!",
                30
            ),
            "a person riding a blue green bike scooter downtown"
        );
        assert_eq!(pre_caption("  one   two\tthree  ", 2), "one two");
        let once = pre_caption("Isn't it \"great\"? #1: yes;~", 30);
        assert_eq!(once, "isnt it great 1 yes");
        assert_eq!(pre_caption(&once, 30), once);
    }
}
