//! Stop strings over a token stream: text is released only once it can no longer be the
//! start of a stop string, so a stream never shows half of `<|im_end|>` and then takes it back.

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    /// Feed new text; returns the text safe to emit and whether a stop string was hit
    /// (the stop string and anything after it are dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > hold && self.pending.ends_with(&s[..i]) {
                    hold = i;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// End of generation: whatever was held back is real text.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_stop() {
        let mut m = StopMatcher::new(&["<|end|>".to_string()]);
        assert_eq!(m.push("Hello <|"), ("Hello ".to_string(), false));
        assert_eq!(m.push("en"), (String::new(), false));
        assert_eq!(m.push("d|> tail"), (String::new(), true));
    }

    #[test]
    fn false_alarm_released() {
        let mut m = StopMatcher::new(&["STOP".to_string()]);
        assert_eq!(m.push("ST"), (String::new(), false));
        assert_eq!(m.push("ART"), ("START".to_string(), false));
        assert_eq!(m.push("S"), (String::new(), false));
        assert_eq!(m.flush(), "S");
    }

    #[test]
    fn earliest_of_several() {
        let mut m = StopMatcher::new(&["b".to_string(), "cd".to_string()]);
        assert_eq!(m.push("a cd b"), ("a ".to_string(), true));
    }

    #[test]
    fn multibyte_safe() {
        let mut m = StopMatcher::new(&["é!".to_string()]);
        assert_eq!(m.push("café"), ("caf".to_string(), false));
        assert_eq!(m.push("?"), ("é?".to_string(), false));
    }
}
